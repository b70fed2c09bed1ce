"""Secret references as the config produces them: each failure names the reference,
never a value. Real env vars, files and shell commands."""

from __future__ import annotations

from pathlib import Path

import pytest

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
