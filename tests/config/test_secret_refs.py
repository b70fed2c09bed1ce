"""Secret references as the config produces them: each failure names the reference,
never a value. Real env vars, files and shell commands."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import HCBAK

from hcbak.errors import ExitCode, SecretError
from hcbak.secrets import Secret, SecretRef


def test_each_source_resolves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HCBAK_T_PW", "from-env")
    (tmp_path / "pw").write_text("from-file\n")
    assert SecretRef(env="HCBAK_T_PW").resolve() == Secret("from-env")
    assert SecretRef(file=str(tmp_path / "pw")).resolve() == Secret("from-file")
    assert SecretRef(command="printf from-command").resolve() == Secret("from-command")


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        (SecretRef(env="HCBAK_T_UNSET"), "environment variable HCBAK_T_UNSET is not set"),
        (SecretRef(file="/nonexistent/pw"), "secret file /nonexistent/pw does not exist"),
        (SecretRef(command="echo leaked-value; exit 3"), "exited with status 3"),
        (SecretRef(command="true"), "printed nothing"),
        (SecretRef(), "no secret source"),
    ],
)
def test_resolution_errors_name_the_reference_not_the_value(
    ref: SecretRef, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HCBAK_T_UNSET", raising=False)
    with pytest.raises(SecretError, match=message) as info:
        ref.resolve()
    assert info.value.exit_code == ExitCode.USAGE
    assert "leaked-value" not in info.value.one_line()


def test_unreadable_and_empty_files_are_errors(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match="could not be read"):
        SecretRef(file=str(tmp_path)).resolve()  # a directory: unreadable even for root
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(SecretError, match="is empty"):
        SecretRef(file=str(tmp_path / "empty")).resolve()


@pytest.mark.parametrize("source", ["env", "file", "command"])
def test_a_passphrase_that_is_not_utf8_is_a_one_line_error_naming_its_source(
    tmp_path: Path, hcbak_env: dict[str, str], source: str
) -> None:
    """Bytes that are not UTF-8 ended in "internal error (UnicodeEncodeError)", exit 4."""
    import os
    import subprocess

    bad = b"caf\xe9 latin-1 passphrase"
    (tmp_path / "pass").write_bytes(bad + b"\n")
    (tmp_path / "pass").chmod(0o600)
    flag = {
        "env": ["--passphrase-env", "HCBAK_T_LATIN1"],
        "file": ["--passphrase-file", str(tmp_path / "pass")],
        "command": ["--passphrase-command", f"cat {tmp_path / 'pass'}"],
    }[source]
    env = {os.fsencode(k): os.fsencode(v) for k, v in hcbak_env.items()}
    env[b"HCBAK_T_LATIN1"] = bad
    proc = subprocess.run(
        [*HCBAK, "repo", "add", "main", "--path", str(tmp_path / "r"),
         "--encrypt", *flag],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and "is not UTF-8 text" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "r" / "config").exists()
