"""The dataclass code cache: a hit is exactly what compiling would have made."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hcbak import codecache


def _methods(cls: type) -> dict[str, Any]:
    """The code of every method dataclasses generated for cls."""
    out = {}
    for name, value in vars(cls).items():
        fn = getattr(value, "__wrapped__", value)  # __repr__ is wrapped by recursive_repr
        code = getattr(fn, "__code__", None)
        if code is not None:
            out[name] = code
    return out


def _make(spec: dict[str, Any], how: Any, monkeypatch: pytest.MonkeyPatch) -> type:
    """The dataclass `spec` describes, with `how` as dataclasses' exec (None: builtin)."""
    with monkeypatch.context() as m:
        if how is None:
            m.delattr(dataclasses, "exec", raising=False)
        else:
            m.setattr(dataclasses, "exec", how, raising=False)
        ns: dict[str, Any] = {"__annotations__": {}}
        for name, default in spec["fields"]:
            ns["__annotations__"][name] = "int"
            if default is not None:
                ns[name] = default
        cls = type("Record", (), ns)
        return dataclasses.dataclass(frozen=spec["frozen"], eq=spec["eq"], order=spec["order"])(cls)


_SPECS = st.fixed_dictionaries(
    {
        "fields": st.lists(
            st.tuples(st.sampled_from(["a", "b", "size", "uuid", "n"]), st.none()),
            max_size=5,
            unique_by=lambda f: f[0],
        ).flatmap(
            lambda fs: st.tuples(*[st.just(f) for f in fs], st.integers(0, len(fs))).map(
                lambda t: [
                    (name, 7 if k >= t[-1] else None) for k, (name, _) in enumerate(t[:-1])
                ]  # defaults only after the fields without one
            )
        ),
        "frozen": st.booleans(),
        "eq": st.booleans(),
        "order": st.booleans(),
    }
).filter(lambda s: s["eq"] or not s["order"])


@settings(max_examples=60, deadline=None)
@given(spec=_SPECS)
def test_cached_code_is_the_code_compile_makes(
    spec: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> None:
    monkeypatch = pytest.MonkeyPatch()
    try:
        path = str(tmp_path_factory.mktemp("cache") / "codes.marshal")
        plain = _methods(_make(spec, None, monkeypatch))
        first = codecache.CodeCache(path)
        assert _methods(_make(spec, first.exec, monkeypatch)) == plain
        first.save()
        again = codecache.CodeCache(path)  # as the next process loads it
        assert _methods(_make(spec, again.exec, monkeypatch)) == plain
        assert again.added == 0 and (again.used or not plain)  # every text was a hit
    finally:
        monkeypatch.undo()


def _fresh_process(cache_home: Path, **env: str) -> dict[str, Any]:
    """Import hcbak's modules in a new interpreter; what its cache did."""
    code = (
        "import json, dataclasses, hcbak, hcbak.config, hcbak.engine.report\n"
        "cache = getattr(getattr(dataclasses, 'exec', None), '__self__', None)\n"
        "print(json.dumps(None if cache is None else "
        "{'added': cache.added, 'used': len(cache.used), 'path': cache.path}))\n"
        "cache is not None and cache.save()\n"
    )
    full = {k: v for k, v in os.environ.items() if k != "HCBAK_NO_CODE_CACHE"}
    full.update(XDG_CACHE_HOME=str(cache_home), **env)
    proc = subprocess.run(
        [sys.executable, "-c", code], env=full, capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_the_second_start_compiles_nothing(tmp_path: Path) -> None:
    first = _fresh_process(tmp_path)
    assert first["added"] > 20  # hcbak's dataclasses, compiled and saved
    saved = Path(first["path"])
    assert saved.parent == tmp_path / "hcbak"
    assert oct(saved.stat().st_mode & 0o777) == oct(0o600)
    second = _fresh_process(tmp_path)
    assert second["added"] == 0 and second["used"] == first["used"]


@pytest.mark.parametrize("damage", ["group-writable", "garbage", "not-a-dict"])
def test_a_cache_file_that_cannot_be_trusted_is_not_used(tmp_path: Path, damage: str) -> None:
    first = _fresh_process(tmp_path)
    saved = Path(first["path"])
    if damage == "group-writable":
        saved.chmod(0o620)  # anyone in the group could have put code there
    elif damage == "garbage":
        saved.write_bytes(b"\x00not marshal data")
    else:
        import marshal

        saved.write_bytes(marshal.dumps(["a", "list"]))
    again = _fresh_process(tmp_path)
    assert again["added"] == first["added"]  # compiled as if there were no file


def test_it_can_be_turned_off(tmp_path: Path) -> None:
    assert _fresh_process(tmp_path, HCBAK_NO_CODE_CACHE="1") is None
    assert not (tmp_path / "hcbak").exists()


def test_a_cache_that_cannot_be_written_only_costs_the_compile(tmp_path: Path) -> None:
    (tmp_path / "hcbak").write_text("a file where the folder would be")
    assert _fresh_process(tmp_path)["added"] > 20  # and no error
    assert _fresh_process(tmp_path)["added"] > 20
