"""Shared pieces of the CLI tests: a base config and an exit-code/message check."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import assert_no_traceback

FP = "ab" * 32
RunInproc = Callable[..., subprocess.CompletedProcess[str]]

BASE = f"""\
clusters:
  prod:
    nodes: [10.0.0.11]
    username: hcbak
    password_env: HCBAK_TEST_PW
    tls: {{fingerprints: {{"10.0.0.11": "{FP}"}}}}
repositories:
  main: {{path: /srv/hcbak}}
"""


@pytest.fixture
def config_path(hcbak_env: dict[str, str]) -> Path:
    return Path(hcbak_env["HCBAK_CONFIG"])


@pytest.fixture
def base_config(config_path: Path) -> Path:
    """A valid config with cluster `prod` and repository `main` (no jobs)."""
    config_path.write_text(BASE)
    config_path.chmod(0o600)
    return config_path


def expect(proc: subprocess.CompletedProcess[str], code: int, *fragments: str) -> None:
    """Exit code, message fragments on stderr, and never a traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr
    assert_no_traceback(proc)


@pytest.fixture
def run_inproc(
    hcbak_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """`hcbak.cli.main.run(argv)` in this process: the same entry point as the console
    script, without the ~0.7 s interpreter start, for the long tables of bad input."""
    from hcbak.cli.main import run

    for key in [k for k in os.environ if k.startswith("HCBAK_")]:
        monkeypatch.delenv(key)
    for key in [k for k in hcbak_env if k.startswith("HCBAK_")]:
        monkeypatch.setenv(key, hcbak_env[key])

    def call(
        *args: str, env: dict[str, str] | None = None, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        with monkeypatch.context() as patch:
            for key, value in (env or {}).items():
                patch.setenv(key, value)
            capsys.readouterr()
            code = run(list(args))
            out, err = capsys.readouterr()
        proc = subprocess.CompletedProcess(["hcbak", *args], code, out, err)
        if check:
            assert code == 0, (args, code, out, err)
        return proc

    return call
