"""SIGKILL at scheduled moments of `hcbak job run`, `hcbak repo prune` and `hcbak restore
disk` (real child processes). After every kill: the next run succeeds and cleans up,
every committed point restores bit-exact, and `repo verify --read-data` exits 0.

Kill delays come from `kill_schedule`: seeded, evenly spread with jitter over 5-85% of
the wall time of an uninterrupted run of the same command measured just before (start-up
included), so kills land in every phase. A kill that finds the run already finished
(a faster run than the calibration) is retried with a shorter delay (`kill_landing`),
so all 26 scheduled kills hit a live process.
"""

from __future__ import annotations

import itertools
import random
import signal
import subprocess
from pathlib import Path

import pytest
from engine.helpers import MiB, lab

from .helpers import (
    Ledger,
    cli,
    file_sha256,
    guest_writes,
    kill_landing,
    kill_schedule,
    sha256,
    spawn,
    timed_run,
    wait_for,
)

pytestmark = pytest.mark.reliability

SEED = 20261127


def _verify_clean(env: dict[str, str]) -> None:
    res = cli(env, "repo", "verify", "main", "--read-data")
    res.assert_clean()
    assert res.code == 0, res.err


def test_sigkill_during_job_run_loses_no_committed_point(tmp_path: Path) -> None:
    rnd = random.Random(SEED)
    with lab(tmp_path) as L:
        vm = L.sim.create_vm("web01", [4 * MiB], tags=["nightly"])
        disk = L.sim.disk_uuids(vm)[0]
        L.sim.fill(disk, seed=7)
        L.sim.faults.task_delay(0.05)  # tasks take a moment, as on a real cluster
        ledger = Ledger(L, [disk])
        live = ledger.live_hashes()
        assert cli(L.env, "job", "run", "nightly").code == 0
        ledger.record_new(live)
        guest_writes(L, disk, rnd)
        live = ledger.live_hashes()
        span = timed_run(L.env, "job", "run", "nightly")  # an incremental, like those killed
        ledger.record_new(live)
        delays = kill_schedule(SEED, 12, earliest=0.05 * span, latest=0.85 * span)
        for delay in delays:
            guest_writes(L, disk, rnd)
            live = ledger.live_hashes()
            kill_landing(lambda: spawn(L.env, "job", "run", "nightly"), delay)
            ledger.record_new(live)  # the killed run may have committed its point
            again = cli(L.env, "job", "run", "nightly", "--json")
            again.assert_clean()
            assert again.code == 0, (delay, again.err)
            ledger.record_new(live)
            assert ledger.check() == len(ledger.expected)
            assert L.worker_clones() == [], f"orphan clone after kill at {delay:.2f}s"
            assert len(L.hcbak_snapshots(vm)) == 1, "exactly the newest base snapshot remains"
            _verify_clean(L.env)


def test_sigkill_during_prune_keeps_every_retained_point(tmp_path: Path) -> None:
    from hcbak.config import Retention

    rnd = random.Random(SEED + 1)
    keep = 2
    with lab(tmp_path, retention=Retention(keep_last=keep)) as L:
        vm = L.sim.create_vm("db01", [4 * MiB], tags=["nightly"])
        disk = L.sim.disk_uuids(vm)[0]
        L.sim.fill(disk, seed=8)
        ledger = Ledger(L, [disk])
        order: list[str] = []
        for _ in range(3):  # calibrate: a prune that deletes the data of one forgotten point
            guest_writes(L, disk, rnd, count=8)
            live = ledger.live_hashes()
            assert cli(L.env, "job", "run", "nightly").code == 0
            order += ledger.record_new(live)
        span = timed_run(L.env, "repo", "prune", "main")
        delays = kill_schedule(SEED + 1, 7, earliest=0.05 * span, latest=0.85 * span)
        for delay in delays:
            for _ in range(2):  # two new points, so every prune has data to delete
                guest_writes(L, disk, rnd, count=8)
                live = ledger.live_hashes()
                res = cli(L.env, "job", "run", "nightly")
                assert res.code == 0, res.err
                order += ledger.record_new(live)
            kill_landing(lambda: spawn(L.env, "repo", "prune", "main"), delay)
            # A killed prune leaves its exclusive lock behind; the next backup must still
            # run (the holder is provably dead on this host).
            guest_writes(L, disk, rnd)
            live = ledger.live_hashes()
            res = cli(L.env, "job", "run", "nightly")
            res.assert_clean()
            assert res.code == 0, (delay, res.err)
            order += ledger.record_new(live)
            newest = set(order[-keep:])
            ledger.check(allowed_missing=set(order) - newest)
            _verify_clean(L.env)
        done = cli(L.env, "repo", "prune", "main")
        assert done.code == 0, done.err
        assert ledger.check(allowed_missing=set(order[:-keep])) >= keep
        assert list(L.repo_path.rglob(".tmp-*")) == [], "prune leaves no temp files behind"


def test_sigkill_during_restore_then_restore_again_is_bit_exact(tmp_path: Path) -> None:
    with lab(tmp_path) as L:
        vm = L.sim.create_vm("app01", [16 * MiB], tags=["nightly"])
        disk = L.sim.disk_uuids(vm)[0]
        L.sim.fill(disk, seed=9, written=0.9, compressible=0.2)
        ledger = Ledger(L, [disk])
        live = ledger.live_hashes()
        assert cli(L.env, "job", "run", "nightly").code == 0
        (pid,) = ledger.record_new(live)
        span = timed_run(L.env, "restore", "disk", pid, "--disk", "0", "--to", str(tmp_path / "t"))
        delays = kill_schedule(SEED + 2, 7, earliest=0.05 * span, latest=0.85 * span)
        attempt = itertools.count()

        def start() -> subprocess.Popen[bytes]:
            out = tmp_path / f"killed-{next(attempt)}.raw"
            return spawn(L.env, "restore", "disk", pid, "--disk", "0", "--to", str(out))

        for n, delay in enumerate(delays):
            kill_landing(start, delay)
            good = tmp_path / f"good-{n}.raw"
            res = cli(L.env, "restore", "disk", pid, "--disk", "0", "--to", str(good))
            res.assert_clean()
            assert res.code == 0, (delay, res.err)
            assert file_sha256(good) == live[disk]
            good.unlink()
            _verify_clean(L.env)
        assert ledger.check() == 1


def test_killed_restore_leaves_no_file_that_looks_complete(tmp_path: Path) -> None:
    """A restore killed at any moment leaves either no file at the final name or the
    whole, correct disk; never a full-size file with missing data. The next restore to
    that name removes the dead run's partial file."""
    with lab(tmp_path) as L:
        vm = L.sim.create_vm("app01", [16 * MiB], tags=["nightly"])
        disk = L.sim.disk_uuids(vm)[0]
        L.sim.fill(disk, seed=9, written=0.9, compressible=0.2)
        assert cli(L.env, "job", "run", "nightly").code == 0
        pid = L.points()[0].id
        expected = sha256(L.sim.read_live(disk, 0, 16 * MiB))
        out = tmp_path / "restored.raw"
        partials = lambda: list(tmp_path.glob(".restored.raw.hcbak-partial-*"))  # noqa: E731
        hits = 0
        for _ in range(3):
            out.unlink(missing_ok=True)
            proc = spawn(L.env, "restore", "disk", pid, "--disk", "0", "--to", str(out))
            wait_for(lambda p=proc: bool(partials()) or out.exists() or p.poll() is not None)
            if proc.poll() is None:  # kill while the restore writes
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                hits += 1
            assert not out.exists() or file_sha256(out) == expected
        assert hits
        out.unlink(missing_ok=True)
        assert cli(L.env, "restore", "disk", pid, "--disk", "0", "--to", str(out)).code == 0
        assert file_sha256(out) == expected
        assert partials() == []
