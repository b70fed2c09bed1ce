"""Fixtures shared by every test package.

Tests run the real `hcbak` program: `run_hcbak` starts it as a subprocess with an
isolated config and state directory, so nothing touches the developer's own files.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

HCBAK = [sys.executable, "-m", "hcbak"]
# Every repository the tests create gets a cheap Argon2id (~1 ms instead of ~0.3 s per
# open) and every hcbak they start accepts it (hcbak/repo/kdf.py, WEAKEN_ENV). Tests of
# the real parameters and of the floor remove it with monkeypatch.delenv.
WEAKEN_KDF = "HCBAK_TESTONLY_WEAKEN_KDF"
os.environ[WEAKEN_KDF] = "1"


@pytest.fixture
def hcbak_env(tmp_path: Path) -> dict[str, str]:
    """Environment for a subprocess: its own config path and state dir under tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HCBAK_")}
    if WEAKEN_KDF in os.environ:
        env[WEAKEN_KDF] = os.environ[WEAKEN_KDF]
    env["HCBAK_CONFIG"] = str(tmp_path / "config.yaml")
    env["HCBAK_STATE_DIR"] = str(tmp_path / "state")
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("COLUMNS", "200")
    return env


RunHcbak = Callable[..., subprocess.CompletedProcess[str]]


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
        merged = dict(hcbak_env)
        if env:
            merged.update(env)
        proc = subprocess.run(
            [*HCBAK, *args],
            input=input,
            env=merged,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"hcbak {' '.join(args)} exited {proc.returncode}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    return run


def assert_no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout, proc.stdout


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


@contextmanager
def mounted_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A size-limited tmpfs at `path` for full-disk tests (needs root: the test is
    skipped otherwise), unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here (needs root): {proc.stderr}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
