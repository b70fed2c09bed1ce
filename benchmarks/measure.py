"""Run a command and measure its wall time and peak RSS (via wait4 on that child alone)."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass


@dataclass
class Measured:
    seconds: float
    peak_rss_mib: float
    returncode: int
    stdout: str
    stderr: str


def run_measured(
    argv: list[str], *, env: dict[str, str] | None = None, cwd: str | None = None
) -> Measured:
    """Run argv to completion; ru_maxrss from wait4 covers this child (and its waited kids).

    Dirty pages of earlier steps (the image just written, the simulated guest's writes)
    are flushed first: otherwise the first fsync of the measured command pays for them,
    and on a real cluster the guest's writes are not on the backup host at all."""
    os.sync()
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    out, err = "", ""
    # Read pipes until EOF so the child never blocks on a full pipe, then reap with wait4.
    assert proc.stdout is not None and proc.stderr is not None
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    return Measured(seconds, usage.ru_maxrss / 1024.0, proc.returncode, out, err)


def dir_size(path: str) -> int:
    """Bytes allocated on disk below path (what the repository really costs)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total
