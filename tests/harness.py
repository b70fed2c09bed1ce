"""The one way tests run `hcbak`: as a real subprocess, or in this process.

- `run_subprocess(args, env)`: `python -m hcbak ARGS` as a child, as a user or cron
  runs it (start-up, signals, exit codes, stdout/stderr separate).
- `run_in_process(args, env)`: `hcbak.cli.main.run(ARGS)`, the console script's entry,
  without the ~0.7 s interpreter start: for long tables of inputs and for runs around
  the crash tests. stdin reads EOF, so a prompt never waits on pytest's stdin.
Both take the environment the program sees (`isolated_env` gives each test its own
config path and state dir) and return a `subprocess.CompletedProcess` (text).
The fixtures `hcbak_env`, `run_hcbak` and `run_inproc` (conftest.py) wrap these.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

HCBAK = [sys.executable, "-m", "hcbak"]
# Every repository the tests create gets a cheap Argon2id (~1 ms instead of ~0.3 s per
# open) and every hcbak they start accepts it (hcbak/repo/kdf.py, WEAKEN_ENV). Tests of
# the real parameters and of the floor remove it with monkeypatch.delenv.
WEAKEN_KDF = "HCBAK_TESTONLY_WEAKEN_KDF"

RunHcbak = Callable[..., subprocess.CompletedProcess[str]]


def isolated_env(tmp_path: Path) -> dict[str, str]:
    """This process's environment without the developer's HCBAK_* settings, with a
    config path and a state dir of its own under tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HCBAK_")}
    if WEAKEN_KDF in os.environ:
        env[WEAKEN_KDF] = os.environ[WEAKEN_KDF]
    env["HCBAK_CONFIG"] = str(tmp_path / "config.yaml")
    env["HCBAK_STATE_DIR"] = str(tmp_path / "state")
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("COLUMNS", "200")
    return env


def run_subprocess(
    args: list[str],
    env: Mapping[str, str],
    *,
    input: str | None = None,
    timeout: float = 120,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run `hcbak ARGS` as a real child process with exactly `env`."""
    proc = subprocess.run(
        [*HCBAK, *args], input=input, env=dict(env), capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    if check:
        assert_succeeded(proc)
    return proc


def run_in_process(
    args: list[str], env: Mapping[str, str], *, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run `hcbak ARGS` in this process. Its HCBAK_* variables are those of `env` (the
    others are set too) while it runs, as in `isolated_env`; all is put back after."""
    from hcbak.cli.main import run

    out, err = io.StringIO(), io.StringIO()
    with _environment(env), _no_stdin():
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run(list(args))
    proc = subprocess.CompletedProcess(["hcbak", *args], code, out.getvalue(), err.getvalue())
    if check:
        assert_succeeded(proc)
    return proc


def assert_succeeded(proc: subprocess.CompletedProcess[str]) -> None:
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, proc.args))} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )


def assert_no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout, proc.stdout


@contextmanager
def mounted_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A size-limited tmpfs at `path` for full-disk tests (needs root: the test is
    skipped otherwise), unmounted afterwards."""
    import pytest

    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here (needs root): {proc.stderr}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@contextmanager
def _environment(env: Mapping[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    stray = [k for k in os.environ if k.startswith("HCBAK_") and k not in env]
    for key in stray:
        if key != WEAKEN_KDF:  # as in isolated_env: the tests' cheap key derivation
            del os.environ[key]
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextmanager
def _no_stdin() -> Iterator[None]:
    stdin = sys.stdin
    sys.stdin = io.StringIO("")
    try:
        yield
    finally:
        sys.stdin = stdin
