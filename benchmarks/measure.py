"""Run a command; measure its wall time, CPU time and peak RSS (wait4 on that child alone)."""

from __future__ import annotations

import compileall
import hashlib
import os
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "hcbak"


MiB = 1 << 20


@dataclass
class Row:
    """One line of the results table: a tool's step, its time and memory."""

    tool: str
    step: str
    seconds: float
    mib_s: float
    rss_mib: float | None = None
    repo_bytes: int | None = None  # repository size (full), growth (incr), allocated (restore)
    samples: list[float] = field(default_factory=list)  # every run of a repeated step

    @classmethod
    def repeated(
        cls,
        tool: str,
        step: str,
        size: int,
        seconds: list[float],
        rss: list[float],
        growth: list[int],
    ) -> Row:
        """A step run several times: the median time and growth, the highest RSS."""
        median = statistics.median(seconds)
        return cls(
            tool,
            step,
            median,
            size / MiB / median,
            max(rss),
            int(statistics.median(growth)),
            seconds,
        )


@dataclass
class Measured:
    seconds: float
    peak_rss_mib: float
    returncode: int
    stdout: str
    stderr: str
    cpu_seconds: float = 0.0  # user + system of the child: what it cost, whatever the load


def ensure_bytecode() -> None:
    """Byte-compile hcbak as `pip install` leaves it. Under PYTHONDONTWRITEBYTECODE (set
    in some CI and dev shells) an editable checkout otherwise recompiles every module at
    each start, about 0.1 s that no installed hcbak pays."""
    compileall.compile_dir(PACKAGE, quiet=1)


def run_measured(
    argv: list[str], *, env: dict[str, str] | None = None, cwd: str | None = None
) -> Measured:
    """Run argv to completion; ru_maxrss from wait4 covers this child (and its waited kids).

    It never reads below this (parent) process's own peak RSS: the kernel keeps the
    high-water mark of the memory the child had before exec (the parent's, through
    vfork). A benchmark whose own process grows large sees that as every child's floor.

    Dirty pages of earlier steps (the image just written, the simulated guest's writes)
    are flushed first: otherwise the first fsync of the measured command pays for them,
    and on a real cluster the guest's writes are not on the backup host at all."""
    ensure_bytecode()
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
    cpu = usage.ru_utime + usage.ru_stime
    return Measured(seconds, usage.ru_maxrss / 1024.0, proc.returncode, out, err, cpu)


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


def evict_from_cache(path: Path) -> None:
    """Drop the files below path from the page cache (written back first).

    For restores: a restore reads a repository written long before, and hcbak drops its
    packs from the cache as it writes them while restic and borg leave theirs there, so
    a restore straight after the backups read from memory for the peers and from the
    disk for hcbak. Every tool's repository is evicted before its restore instead."""
    os.sync()
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                fd = os.open(os.path.join(root, name), os.O_RDONLY)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def parse_size(text: str) -> int:
    """A size argument: bytes, or with a k/m/g unit (K, MiB, 4GiB, 1.5G...)."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


def sha256_file(path: Path) -> str:
    """sha256 of a file (identity checks of restored images)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
