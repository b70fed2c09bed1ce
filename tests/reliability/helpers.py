"""Shared tools of the reliability suite: in-process CLI calls, killers, a ledger.

The suite reuses the engine tests' `lab` (a real simulator on 127.0.0.1, a config and a
repository). What it adds is bookkeeping that makes "no data loss" checkable: a
`Ledger` remembers the content hash of every point at the moment it was committed
(taken from the simulator's snapshot, i.e. what the cluster really held), and
`Ledger.check` proves each one still restores to exactly those bytes. For prune, whose
steps are too short to hit by timing, `kill_at_prune_phase` kills a driver process
(tests/repo/crash_writer.py) where it stops at a named step.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from engine.helpers import Lab, wait_for  # noqa: F401  (the reliability tests' helper too)
from harness import HCBAK, run_in_process

from hcbak.errors import ExitCode
from hcbak.repo import ZERO_BLOCK, open_repo

PRUNE_DRIVER = Path(__file__).parents[1] / "repo" / "crash_writer.py"
# The steps of prune at which PRUNE_DRIVER can stop, in protocol order.
PRUNE_PHASES = ("packs-written", "index-written", "old-index-deleted", "pack-deleted")
DOCUMENTED_EXIT_CODES = {int(code) for code in ExitCode}


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def assert_clean(self) -> None:
        """Never a traceback or an 'internal error' line: those are bugs, not outcomes."""
        assert "Traceback" not in self.err + self.out, self.err
        assert "internal error" not in self.err, self.err
        assert self.code in DOCUMENTED_EXIT_CODES, (self.code, self.err)


def cli(env: dict[str, str], *argv: str) -> CliResult:
    """`hcbak ARGV` in this process (the simulator keeps running in its threads).

    In-process calls save the ~1 s interpreter start of a subprocess; the crash tests
    still kill real subprocesses, this is only for the runs around them.
    """
    proc = run_in_process(list(argv), env)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def spawn(env: dict[str, str], *argv: str) -> subprocess.Popen[bytes]:
    """`hcbak ARGV` as a real child process (the thing a SIGKILL can hit)."""
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [*HCBAK, *argv], env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def kill_schedule(seed: int, count: int, earliest: float, latest: float) -> list[float]:
    """Deterministic kill delays spread evenly over [earliest, latest] with seeded jitter,
    in a seeded order, so kills land in every phase of a run (start-up, snapshot, read,
    commit, cleanup) and a failure names a reproducible delay."""
    rnd = random.Random(seed)
    step = (latest - earliest) / count
    delays = [earliest + step * (i + rnd.random()) for i in range(count)]
    rnd.shuffle(delays)
    return delays


def timed_run(env: dict[str, str], *argv: str) -> float:
    """Wall time of one uninterrupted `hcbak ARGV` child: the span kill schedules cover
    (start-up included), measured on this machine now rather than guessed."""
    start = time.monotonic()
    proc = spawn(env, *argv)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    return time.monotonic() - start


def kill_after(proc: subprocess.Popen[bytes], delay: float) -> bool:
    """SIGKILL the child after `delay` s; False when it had already finished."""
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


def kill_landing(
    start: Callable[[], subprocess.Popen[bytes]], delay: float, tries: int = 5
) -> float:
    """Start a child and SIGKILL it after `delay`; when it finished first (a faster run
    than the calibration), start again with 60% of the delay. Returns the delay that hit
    a live process, so every scheduled kill point is a real kill."""
    for _ in range(tries):
        if kill_after(start(), delay):
            return delay
        delay *= 0.6
    raise AssertionError(f"no kill landed within {tries} tries (last delay {delay:.3f}s)")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def point_sha(repo_path: Path, point_id: str, disk_uuid: str) -> str:
    """Content hash of one disk of a point, read back block by block from the repo."""
    with open_repo(repo_path, lock=None) as repo:
        image = next(d for d in repo.load_point(point_id).disks if d.uuid == disk_uuid)
        h = hashlib.sha256()
        left = image.capacity
        for i in range(len(image.block_map)):
            bid = image.block_map.get(i)
            block = bytes(image.block_size) if bid == ZERO_BLOCK else repo.get_block(bid)
            h.update(block[:left])
            left -= len(block[:left])
        return h.hexdigest()


@dataclass
class Ledger:
    """point id -> {disk uuid: sha256 of the content the cluster held at backup time}."""

    lab: Lab
    disks: list[str]
    expected: dict[str, dict[str, str]] = field(default_factory=dict)

    def live_hashes(self) -> dict[str, str]:
        """The guest disks now; the suite writes only between runs, so a point made by
        any run that starts now must hold exactly these bytes."""
        return {d: sha256(self.lab.sim.read_live(d, 0, self._capacity(d))) for d in self.disks}

    def record_new(self, live: dict[str, str]) -> list[str]:
        """Register points that appeared since the last call. Where the run's snapshot
        still exists, its content is compared with the live hashes taken before the run
        (the two must agree, or the ledger itself would be wrong)."""
        new = [p.id for p in self.lab.points() if p.id not in self.expected]
        for pid in new:
            with open_repo(self.lab.repo_path, lock=None) as repo:
                point = repo.load_point(pid)
            mine = [d.uuid for d in point.disks if d.uuid in live]  # this VM's disks
            snap_ids = {s["uuid"] for s in self.lab.sim.snapshots()}
            if point.snapshot_uuid in snap_ids:
                for d in mine:
                    data = self.lab.sim.read_snapshot(point.snapshot_uuid, d, 0, self._capacity(d))
                    assert sha256(data) == live[d], f"snapshot of {pid} differs from the guest"
            self.expected[pid] = {d: live[d] for d in mine}
        return new

    def check(self, allowed_missing: set[str] | None = None) -> int:
        """Every recorded point is present (unless retention may have forgotten it) and
        restores bit-exact. Returns how many points were checked."""
        present = {p.id for p in self.lab.points()}
        checked = 0
        for pid, hashes in self.expected.items():
            if pid not in present:
                assert allowed_missing is not None and pid in allowed_missing, (
                    f"committed point {pid} vanished"
                )
                continue
            for disk, digest in hashes.items():
                assert point_sha(self.lab.repo_path, pid, disk) == digest, (pid, disk)
            checked += 1
        return checked

    def _capacity(self, disk: str) -> int:
        return int(next(d for d in self.lab.sim.block_devices() if d["uuid"] == disk)["capacity"])


def guest_writes(lab: Lab, disk: str, rnd: random.Random, count: int = 4) -> None:
    """A few random guest writes (random and repetitive data, varied sizes and offsets)."""
    capacity = int(next(d for d in lab.sim.block_devices() if d["uuid"] == disk)["capacity"])
    for _ in range(count):
        size = rnd.choice([512, 4096, 65536, 300_000])
        offset = rnd.randrange(0, capacity - size)
        data = rnd.randbytes(size) if rnd.random() < 0.5 else bytes([rnd.randrange(256)]) * size
        lab.sim.write(disk, offset, data)


@dataclass(frozen=True)
class RepoFiles:
    """The pack and index segment names of a repository at one moment."""

    packs: frozenset[str]
    segments: frozenset[str]

    @classmethod
    def of(cls, root: Path) -> RepoFiles:
        def names(folder: str) -> frozenset[str]:
            return frozenset(
                p.name
                for p in (root / folder).rglob("*")
                if p.is_file() and not p.name.startswith(".tmp-")
            )

        return cls(names("packs"), names("index"))


def assert_prune_phase_on_disk(phase: str, before: RepoFiles, now: RepoFiles) -> None:
    """What each prune step (tests/repo/crash_writer.py) has visibly done by its end."""
    new_packs, gone_packs = now.packs - before.packs, before.packs - now.packs
    new_segments = now.segments - before.segments
    gone_segments = before.segments - now.segments
    if phase == "packs-written":
        assert new_packs and not gone_packs and not new_segments, (phase, before, now)
    elif phase == "index-written":
        assert new_segments and not gone_segments and not gone_packs, (phase, before, now)
    elif phase == "old-index-deleted":
        assert new_segments and gone_segments and not gone_packs, (phase, before, now)
    elif phase == "pack-deleted":
        assert len(gone_packs) == 1 and gone_segments, (phase, before, now)
    else:
        raise AssertionError(f"unknown prune phase {phase}")


def start_prune_driver(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """tests/repo/crash_writer.py ARGS as a child whose stdout carries its announcements."""
    return subprocess.Popen(
        [sys.executable, str(PRUNE_DRIVER), *args],
        env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_at_prune_phase(
    proc: subprocess.Popen[str],
    phase: str,
    root: Path | Callable[[], RepoFiles],
    before: RepoFiles,
) -> None:
    """`proc` is a prune driver stopping at `phase`: wait for it to announce the phase,
    prove it is alive there and that the phase's effect is on disk (compared with
    `before`, the files when it started), then SIGKILL it. `root` is the repository
    folder, or what lists the repository's objects now (an S3 bucket)."""
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line.strip())
        if line.split() == ["phase", phase]:
            break
    else:
        proc.wait()
        err = proc.stderr.read() if proc.stderr else ""
        raise AssertionError(f"prune ended (exit {proc.returncode}) before {phase}: {seen} {err}")
    now = RepoFiles.of(root) if isinstance(root, Path) else root()
    assert_prune_phase_on_disk(phase, before, now)
    assert proc.poll() is None, f"the prune process died before the kill at {phase}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, (phase, proc.returncode)
    if proc.stderr:
        proc.stderr.close()
    proc.stdout.close()
