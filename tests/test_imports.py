"""Every module of hcbak imports: a name used at import time (an annotation typer
evaluates, a default value) that is not defined fails here, not in a user's shell."""

from __future__ import annotations

import importlib
import pkgutil

import hcbak


def test_every_module_imports() -> None:
    failed = []
    names = [m.name for m in pkgutil.walk_packages(hcbak.__path__, "hcbak.")]
    assert len(names) > 100  # the walk found the package
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # every failure is reported, not only the first
            failed.append(f"{name}: {type(exc).__name__}: {exc}")
    assert failed == []
