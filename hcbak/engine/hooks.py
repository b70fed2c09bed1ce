"""Pre/post job hooks: operator commands run around a job with HCBAK_* variables.

A pre-hook that fails (non-zero exit, not found, timeout) skips the job (HookError,
exit 4): e.g. a hook that quiesces an application must have succeeded before the
snapshot is worth taking. A failing post-hook is only a warning: the data is committed.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping

from hcbak.errors import HookError

HOOK_TIMEOUT = 3600.0


def hook_env(values: Mapping[str, object]) -> dict[str, str]:
    """The process environment plus HCBAK_<KEY> for each value (None -> empty)."""
    env = dict(os.environ)
    for key, value in values.items():
        env[f"HCBAK_{key.upper()}"] = "" if value is None else str(value)
    return env


def run_hook(
    command: str, phase: str, values: Mapping[str, object], *, timeout: float = HOOK_TIMEOUT
) -> str:
    """Run `command` through the shell; returns its combined output (for the run log)."""
    env = hook_env({"phase": phase, **values})
    try:
        proc = subprocess.run(
            command,
            shell=True,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise HookError(f"{phase}-hook did not finish within {timeout:.0f} s")
    except OSError as exc:
        raise HookError(f"{phase}-hook could not be started: {exc.strerror}")
    if proc.returncode != 0:
        tail = proc.stdout.strip().splitlines()[-1:] if proc.stdout else []
        detail = f": {tail[0][:200]}" if tail else ""
        raise HookError(f"{phase}-hook exited with status {proc.returncode}{detail}")
    return proc.stdout
