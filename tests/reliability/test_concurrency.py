"""Two writers at once, prune against a running backup, and a full repository disk."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from engine.helpers import Lab, MiB, lab
from harness import mounted_tmpfs

from hcbak.config import JobConfig, RepoConfig, save_config
from hcbak.repo import init_repo
from hcbak.repo.locks import read_locks

from .helpers import Ledger, cli, spawn, wait_for
from .lease_race import prune_races_a_backup_that_depends_on_forgotten_blocks

pytestmark = pytest.mark.reliability


def test_two_concurrent_jobs_into_one_repo_both_commit_restorable_points(tmp_path: Path) -> None:
    with lab(tmp_path) as L:
        a = L.sim.create_vm("web01", [4 * MiB], tags=["nightly"])
        b = L.sim.create_vm("db01", [4 * MiB], tags=["weekly"])
        disks = [L.sim.disk_uuids(a)[0], L.sim.disk_uuids(b)[0]]
        for i, d in enumerate(disks):
            L.sim.fill(d, seed=30 + i)
        L.sim.write(disks[1], 0, L.sim.read_live(disks[0], 0, MiB))  # shared blocks: dedup race
        L.config.jobs["weekly"] = JobConfig(
            name="weekly", cluster="lab", repo="main", tags=["weekly"]
        )
        save_config(L.config)
        ledger = Ledger(L, disks)
        live = ledger.live_hashes()
        L.sim.faults.task_delay(1.0)  # each run holds the repository for seconds, even under load
        procs = _overlapping_runs(L, "nightly", "weekly")
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err.decode()
        # The ledger hashes every disk; each point holds only its VM's disk, so check
        # each point against its own disk.
        points = L.points()
        assert sorted(p.vm_name for p in points) == ["db01", "web01"]
        for p in points:
            disk = disks[0] if p.vm_name == "web01" else disks[1]
            ledger.expected[p.id] = {disk: live[disk]}
        assert ledger.check() == 2
        res = cli(L.env, "repo", "verify", "main", "--read-data")
        assert res.code == 0, res.err


def _overlapping_runs(L: Lab, *jobs: str) -> list[subprocess.Popen[bytes]]:
    """`hcbak job run JOB` for each job, at once; returns once every run holds its
    repository lock at the same moment, which proves the runs overlapped."""
    procs = [spawn(L.env, "job", "run", job) for job in jobs]
    pids = {proc.pid for proc in procs}
    wait_for(
        lambda: (
            pids <= {lk.pid for lk in read_locks(L.repo_path)}
            or any(proc.poll() is not None for proc in procs)
        )
    )
    assert all(proc.poll() is None for proc in procs), "a run ended before the other began"
    assert pids <= {lk.pid for lk in read_locks(L.repo_path)}
    return procs


def test_two_jobs_hot_add_to_the_shared_worker_one_at_a_time(tmp_path: Path) -> None:
    """Found by CI: two jobs run at once clone onto the same worker VM, and HyperCore
    answers 500 to a mutation of a VM that has a task running. Slow tasks make the two
    clones overlap in every run unless hcbak serialises them across processes."""
    with lab(tmp_path) as L:
        a = L.sim.create_vm("web01", [2 * MiB], tags=["nightly"])
        b = L.sim.create_vm("db01", [2 * MiB], tags=["weekly"])
        for i, vm in enumerate((a, b)):
            L.sim.fill(L.sim.disk_uuids(vm)[0], seed=60 + i)
        L.config.jobs["weekly"] = JobConfig(
            name="weekly", cluster="lab", repo="main", tags=["weekly"]
        )
        save_config(L.config)
        L.sim.faults.task_delay(
            1.0
        )  # slow tasks: both runs hold the repository a while, even under load
        procs = _overlapping_runs(L, "nightly", "weekly")
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err.decode()
        assert sorted(p.vm_name for p in L.points()) == ["db01", "web01"]


def test_prune_during_a_backup_exits_5_or_waits_and_loses_nothing(tmp_path: Path) -> None:
    """The backup deduplicates against blocks of a forgotten point, which a dry-run prune
    shows it would delete; prune exits 5 (or waits) and both new points restore."""
    with lab(tmp_path) as L:
        prune_races_a_backup_that_depends_on_forgotten_blocks(L, backup_env={})


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "small", "3m") as mnt:
        yield mnt


def test_full_repository_disk_exits_4_with_a_clear_message_and_verifies(
    tmp_path: Path, small_fs: Path
) -> None:
    with lab(tmp_path) as L:
        small = L.sim.create_vm("small01", [1 * MiB], tags=["nightly"])
        big = L.sim.create_vm("big01", [8 * MiB], tags=["weekly"])
        L.sim.fill(L.sim.disk_uuids(small)[0], seed=50)
        L.sim.fill(L.sim.disk_uuids(big)[0], seed=51, written=1.0, compressible=0.0)
        repo = small_fs / "repo"
        init_repo(repo, block_size=256 << 10)
        L.config.repositories["main"] = RepoConfig(
            name="main", path=str(repo), block_size=256 << 10
        )
        L.config.jobs["weekly"] = JobConfig(
            name="weekly", cluster="lab", repo="main", tags=["weekly"], retry_wait=0.1
        )  # one retry (the default), which meets the same full disk
        save_config(L.config)
        ok = cli(L.env, "job", "run", "nightly")
        assert ok.code == 0, ok.err
        full = cli(L.env, "job", "run", "weekly")
        full.assert_clean()
        assert full.code == 4, full.err
        assert "no space" in full.err.lower(), "the reason names the full disk: " + full.err
        start = time.monotonic()
        verify = cli(L.env, "repo", "verify", "main", "--read-data")
        assert verify.code == 0, verify.err
        assert time.monotonic() - start < 30
        assert list(repo.rglob(".tmp-*")) == [], "no temp file is left on the full disk"
        assert [p.vm_name for p in L.points()] == ["small01"]


def test_one_vm_failing_in_its_data_path_does_not_cancel_the_other_vms(
    tmp_path: Path, small_fs: Path
) -> None:
    with lab(tmp_path) as L:
        big = L.sim.create_vm("a-big", [8 * MiB], tags=["weekly"])
        L.sim.fill(L.sim.disk_uuids(big)[0], seed=51, written=1.0, compressible=0.0)
        small = L.sim.create_vm("b-small", [1 * MiB], tags=["weekly"])
        L.sim.fill(L.sim.disk_uuids(small)[0], seed=52)
        repo = small_fs / "repo"
        init_repo(repo, block_size=256 << 10)
        L.config.repositories["main"] = RepoConfig(
            name="main", path=str(repo), block_size=256 << 10
        )
        L.config.jobs["weekly"] = JobConfig(
            name="weekly", cluster="lab", repo="main", tags=["weekly"], parallel=1, retries=0
        )
        save_config(L.config)
        res = cli(L.env, "job", "run", "weekly")
        res.assert_clean()
        assert "interrupted" not in res.err, res.err
        assert res.code == 3, res.err  # a-big failed (disk full), b-small fits: partial
        assert [p.vm_name for p in L.points()] == ["b-small"]
