"""Fixtures shared by every test package.

Tests run the real `hcbak` program through tests/harness.py, the one harness:
`run_hcbak` starts it as a subprocess and `run_inproc` calls its entry point in this
process, both with an isolated config and state directory, so nothing touches the
developer's own files.
"""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest
from harness import WEAKEN_KDF, RunHcbak, isolated_env, run_in_process, run_subprocess

os.environ[WEAKEN_KDF] = "1"


@pytest.fixture
def hcbak_env(tmp_path: Path) -> dict[str, str]:
    """Environment for a subprocess: its own config path and state dir under tmp_path."""
    return isolated_env(tmp_path)


@pytest.fixture
def run_hcbak(hcbak_env: dict[str, str]) -> RunHcbak:
    """Run `hcbak ARGS...` as a real subprocess; returns the CompletedProcess (text)."""

    def run(
        *args: str,
        input: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 120,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        merged = {**hcbak_env, **(env or {})}
        return run_subprocess(list(args), merged, input=input, timeout=timeout, check=check)

    return run


@pytest.fixture
def run_inproc(hcbak_env: dict[str, str]) -> RunHcbak:
    """`hcbak ARGS...` in this process (harness.run_in_process), with the same
    environment as `run_hcbak`: the same entry point as the console script, without
    the interpreter start, for the long tables of bad input."""

    def call(
        *args: str, env: dict[str, str] | None = None, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        return run_in_process(list(args), {**hcbak_env, **(env or {})}, check=check)

    return call


@pytest.fixture
def scrypt_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The thread names of every key derivation (scrypt or Argon2id) the repository
    code runs from now on (the early-derivation slots start empty)."""
    from hcbak.repo import kdf

    calls: list[str] = []
    real = kdf._stretch

    def counting(passphrase: object, params: kdf.KdfParams) -> bytes:
        calls.append(threading.current_thread().name)
        return real(passphrase, params)  # type: ignore[arg-type]

    monkeypatch.setattr(kdf, "_stretch", counting)
    monkeypatch.setattr(kdf, "_early", {})
    return calls
