"""The backup data path against the real simulator and a real repository (in-process)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from hcbak.engine.backup import run_job
from hcbak.engine.connect import connection_settings
from hcbak.engine.report import JobReport
from hcbak.errors import ExitCode
from hcbak.hypercore.client import hypercore_session

from .helpers import BLOCK, Lab, MiB, lab, wait_for


def _run(L: Lab, **kw: object) -> JobReport:
    return run_job(L.config, L.config.job("nightly"), state_dir=L.tmp / "state", **kw)  # type: ignore[arg-type]


def _vm(report: JobReport, name: str):  # type: ignore[no-untyped-def]
    return next(v for v in report.vms if v.name == name)


def _assert_point_matches_snapshot(L: Lab, report: JobReport, name: str) -> None:
    vm = _vm(report, name)
    for disk in vm.disks:
        expected = L.snapshot_content(vm.snapshot_uuid, disk.uuid, disk.capacity)
        assert L.point_content(vm.point_id, disk.uuid) == expected


def test_incremental_reads_exactly_the_changed_blocks_and_points_equal_snapshots(
    tmp_path: Path,
) -> None:
    with lab(tmp_path) as L:
        vm = L.sim.create_vm("web01", [6 * MiB, 3 * MiB], tags=["nightly"])
        disks = L.sim.disk_uuids(vm)
        for i, d in enumerate(disks):
            L.sim.fill(d, seed=i)
        first = _run(L)
        assert first.exit_code() == ExitCode.OK
        assert [d.cbt_reason for d in _vm(first, "web01").disks] == ["no base", "no base"]
        _assert_point_matches_snapshot(L, first, "web01")

        # Guest writes: 3 blocks on disk 0 (one write straddles two blocks), none on disk 1.
        L.sim.write(disks[0], 5, b"a" * 10)
        L.sim.write(disks[0], 4 * BLOCK - 3, b"b" * 6)
        second = _run(L)
        assert second.exit_code() == ExitCode.OK
        d0, d1 = _vm(second, "web01").disks
        assert (d0.cbt_used, d0.cbt_reason, d0.blocks_read) == (True, "snapDiff", 3)
        assert (d1.cbt_used, d1.blocks_read) == (True, 0)
        _assert_point_matches_snapshot(L, second, "web01")
        assert len(L.hcbak_snapshots(vm)) == 1  # only the new base remains
        assert L.hcbak_snapshots(vm)[0]["uuid"] == _vm(second, "web01").snapshot_uuid


def test_clones_are_gone_when_the_run_returns(tmp_path: Path) -> None:
    """Clones are removed in the background while the point commits: the run must still
    wait for every removal (journal entries included) before it reports."""
    from hcbak.engine.state import clone_journal_dir

    with lab(tmp_path) as L:
        vm = L.sim.create_vm("web01", [4 * MiB, 2 * MiB, 2 * MiB], tags=["nightly"])
        for i, d in enumerate(L.sim.disk_uuids(vm)):
            L.sim.fill(d, seed=10 + i)
        for _ in range(2):
            report = _run(L)
            assert report.exit_code() == ExitCode.OK
            worker_disks = [d for d in L.sim.block_devices() if d["vm"] == L.sim.worker_vm_uuid]
            assert [d for d in worker_disks if d.get("sourceSnapshotUUID")] == []
            assert list(clone_journal_dir(L.tmp / "state").glob("*.json")) == []


def test_failed_run_keeps_old_base_and_removes_new_snapshot_and_clone(tmp_path: Path) -> None:
    with lab(tmp_path, retries=1) as L:
        vm = L.sim.create_vm("web01", [2 * MiB], tags=["nightly"])
        L.sim.fill(L.sim.disk_uuids(vm)[0], seed=3)
        first = _run(L)
        base = _vm(first, "web01").snapshot_uuid
        L.sim.faults.fail_tasks("clone")
        second = _run(L)
        L.sim.faults.fail_tasks(None)
        report = _vm(second, "web01")
        assert report.status == "failed" and report.attempts == 2
        assert second.exit_code() == ExitCode.FAILED
        assert [s["uuid"] for s in L.hcbak_snapshots(vm)] == [base]
        worker_disks = [d for d in L.sim.block_devices() if d["vm"] == L.sim.worker_vm_uuid]
        assert [d for d in worker_disks if d.get("sourceSnapshotUUID")] == []
        third = _run(L)  # the kept base still serves an incremental run
        assert _vm(third, "web01").disks[0].cbt_used


def test_base_snapshot_deleted_by_a_human_falls_back_to_full_read_but_stores_nothing_new(
    tmp_path: Path,
) -> None:
    with lab(tmp_path) as L:
        vm = L.sim.create_vm("web01", [4 * MiB], tags=["nightly"])
        L.sim.fill(L.sim.disk_uuids(vm)[0], seed=5)
        first = _run(L)
        assert first.exit_code() == ExitCode.OK  # no base on a first run: expected
        with hypercore_session(connection_settings(L.config.cluster("lab"))) as hc:
            hc.delete_snapshot(_vm(first, "web01").snapshot_uuid)
        second = _run(L)
        (disk,) = _vm(second, "web01").disks
        assert (disk.cbt_used, disk.cbt_reason) == (False, "base snapshot deleted")
        assert disk.blocks_read > 0 and disk.blocks_new == 0 and disk.bytes_stored == 0
        _assert_point_matches_snapshot(L, second, "web01")
        # Nobody asked for that full read: the run says so (exit 1), once per disk.
        assert _vm(second, "web01").warnings == ["disk slot 0: full read, base snapshot deleted"]
        assert second.exit_code() == ExitCode.WARNINGS
        assert _run(L, full=True).exit_code() == ExitCode.OK  # asked for: no warning
        assert _run(L).exit_code() == ExitCode.OK  # and the next incremental is clean


def test_one_vm_failing_lets_the_others_succeed_with_exit_3(tmp_path: Path) -> None:
    with lab(tmp_path) as L:
        good = L.sim.create_vm("good01", [1 * MiB], tags=["nightly"])
        bad = L.sim.create_vm("bad01", [1 * MiB], tags=["nightly"])
        L.sim.write(L.sim.disk_uuids(good)[0], 0, b"x" * 1000)
        L.sim.faults.fail_snapshot(bad)
        report = _run(L)
        assert _vm(report, "good01").status == "ok"
        assert _vm(report, "bad01").status == "failed"
        # The failed task ended: nothing is left for the next run to wait for.
        assert not list((L.tmp / "state" / "tasks").glob("*.json"))
        assert "snapshot" in _vm(report, "bad01").reason.lower()
        assert report.exit_code() == ExitCode.PARTIAL


def test_missing_named_vm_fails_that_vm_only(tmp_path: Path) -> None:
    with lab(tmp_path, vms=["ghost"]) as L:
        L.sim.create_vm("web01", [1 * MiB], tags=["nightly"])
        report = _run(L)
        assert _vm(report, "ghost").status == "failed"
        assert _vm(report, "web01").status == "ok"
        assert report.exit_code() == ExitCode.PARTIAL


def test_node_failure_mid_run_completes_through_another_node(tmp_path: Path) -> None:
    # retries=1 (the job default): a mutation whose answer the dying node swallowed is not
    # repeated blindly by the client; the VM attempt is retried instead.
    with lab(tmp_path, nodes=3, retries=1) as L:
        vms = [L.sim.create_vm(f"vm{i}", [2 * MiB], tags=["nightly"]) for i in range(3)]
        for i, vm in enumerate(vms):
            L.sim.fill(L.sim.disk_uuids(vm)[0], seed=10 + i)
        L.sim.faults.task_delay(0.05)
        result: list[JobReport] = []
        runner = threading.Thread(target=lambda: result.append(_run(L, parallel=1)))
        runner.start()
        deadline = time.monotonic() + 20
        while not any(L.hcbak_snapshots(v) for v in vms) and time.monotonic() < deadline:
            time.sleep(0.01)
        L.sim.faults.node_down(0)
        runner.join(60)
        (report,) = result
        assert report.exit_code() == ExitCode.OK, [v.reason for v in report.vms]
        assert all(len(L.hcbak_snapshots(v)) == 1 for v in vms)
        L.sim.faults.node_ok(0)
        L.sim.wait_idle()
        again = _run(L)  # removes a clone the lost POST may have created
        assert again.exit_code() == ExitCode.OK
        assert not [
            d
            for d in L.sim.block_devices()
            if d["vm"] == L.sim.worker_vm_uuid and d.get("sourceSnapshotUUID")
        ]


def test_replica_vm_is_backed_up_from_its_newest_replicated_snapshot(tmp_path: Path) -> None:
    with lab(tmp_path) as L:
        replica = L.sim.create_replica("dr01", [1 * MiB])
        L.sim.write(L.sim.disk_uuids(replica)[0], 0, b"r" * 5000)
        L.config.jobs["nightly"].vms = ["dr01"]
        L.sim.replicate_snapshot(replica, label="rep-1")
        newest = L.sim.replicate_snapshot(replica, label="rep-2")
        report = _run(L)
        vm = _vm(report, "dr01")
        assert vm.status == "ok" and vm.source == "replica snapshot"
        assert vm.snapshot_uuid == newest
        assert len(L.sim.snapshots(replica)) == 2  # nothing created, nothing deleted
        _assert_point_matches_snapshot(L, report, "dr01")


def test_snapshot_disabled_disk_and_cdrom_are_skipped_with_a_warning(tmp_path: Path) -> None:
    with lab(tmp_path) as L:
        vm = L.sim.create_vm("web01", [1 * MiB, 1 * MiB], tags=["nightly"], cdrom=True)
        L.sim.set_disable_snapshotting(L.sim.disk_uuids(vm)[1])
        report = _run(L)
        web = _vm(report, "web01")
        assert web.status == "ok" and len(web.disks) == 1
        assert any("snapshots disabled" in w for w in web.warnings)
        assert report.exit_code() == ExitCode.WARNINGS


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    with lab(tmp_path) as L:
        vm = L.sim.create_vm("web01", [1 * MiB], tags=["nightly"])
        report = _run(L, dry_run=True)
        assert _vm(report, "web01").reason == "dry run"
        assert report.exit_code() == ExitCode.OK, [v.warnings for v in report.vms]
        assert L.sim.snapshots(vm) == [] and L.points() == []


def test_retention_forgets_old_points_and_prune_after_run_frees_their_data(
    tmp_path: Path,
) -> None:
    from hcbak.config import Retention

    with lab(tmp_path, retention=Retention(keep_last=1), prune="after_run") as L:
        vm = L.sim.create_vm("web01", [2 * MiB], tags=["nightly"])
        disk = L.sim.disk_uuids(vm)[0]
        L.sim.write(disk, 0, b"old" * 50_000)
        first = _run(L)
        L.sim.write(disk, 0, b"new" * 50_000)  # the old block is referenced by point 1 only
        second = _run(L)
        assert second.forgotten == [_vm(first, "web01").point_id]
        assert second.pruned
        assert [p.id for p in L.points()] == [_vm(second, "web01").point_id]
        _assert_point_matches_snapshot(L, second, "web01")


def test_cluster_update_in_progress_skips_the_job_after_update_wait(tmp_path: Path) -> None:
    with lab(tmp_path) as L:
        L.config.clusters["lab"].update_wait = 0.5
        vm = L.sim.create_vm("web01", [1 * MiB], tags=["nightly"])
        L.sim.faults.update("running")
        report = _run(L)
        assert report.exit_code() == ExitCode.FAILED, report
        assert "updating" in report.reason
        assert L.sim.snapshots(vm) == []
        L.sim.faults.update("complete")
        again = _run(L)
        assert again.exit_code() == ExitCode.OK, again


def test_uefi_vm_keeps_nvram_and_vtpm_disks_with_partial_last_block(tmp_path: Path) -> None:
    with lab(tmp_path) as L:
        vm = L.sim.create_vm("win01", [1 * MiB], tags=["nightly"], uefi=True)
        nvram = next(d for d in L.sim.vm_record(vm)["blockDevs"] if d["type"] == "NVRAM")
        L.sim.write(nvram["uuid"], nvram["capacity"] - 100, b"efi-vars" * 10)
        report = _run(L)
        win = _vm(report, "win01")
        assert win.status == "ok", win.reason
        assert {d.type for d in win.disks} >= {"VIRTIO_DISK", "NVRAM"}
        _assert_point_matches_snapshot(L, report, "win01")
        # Its last block is partial: byte counters count the disk's bytes, not the block's.
        (disk,) = [d for d in win.disks if d.type == "NVRAM"]
        tail = disk.capacity % BLOCK
        assert tail and disk.blocks_read >= 1 and disk.blocks_new >= 1
        assert disk.bytes_read == (disk.blocks_read - 1) * BLOCK + tail
        assert disk.bytes_new == (disk.blocks_new - 1) * BLOCK + tail
        L.sim.write(nvram["uuid"], nvram["capacity"] - 50, b"boot-entry")
        (again,) = [d for d in _vm(_run(L), "win01").disks if d.type == "NVRAM"]
        assert (again.blocks_changed, again.bytes_changed) == (1, tail)


def _gated_open(monkeypatch: Any, gate: threading.Event, fail: Exception | None = None) -> None:
    """Hold the real repository open until `gate` is set (then fail it, if asked): a
    stand-in for a slow scrypt or a slow NFS mount, nothing more."""
    from hcbak import repo as repo_pkg

    real = repo_pkg.open_repo

    def held(*args: Any, **kw: Any) -> Any:
        assert gate.wait(20), "the test never opened the gate"
        if fail is not None:
            raise fail
        return real(*args, **kw)

    monkeypatch.setattr(repo_pkg, "open_repo", held)


def _run_two_vms_with_the_repository_held(
    L: Lab, gate: threading.Event
) -> tuple[list[Any], tuple[list[int], int], JobReport]:
    """Back up two VMs while the repository open is held at `gate`: the VMs, (their
    snapshots, clones attached) once both exist or 20 s passed, and the run's report."""
    vms = [L.sim.create_vm(f"web0{i}", [2 * MiB], tags=["nightly"]) for i in (1, 2)]
    for vm in vms:
        L.sim.fill(L.sim.disk_uuids(vm)[0], seed=3)
    result: list[JobReport] = []
    run = threading.Thread(target=lambda: result.append(_run(L, parallel=2)))
    run.start()
    wait_for(lambda: all(L.hcbak_snapshots(vm) for vm in vms) and len(L.worker_clones()) == 2)
    seen = ([len(L.hcbak_snapshots(vm)) for vm in vms], len(L.worker_clones()))
    gate.set()
    run.join(30)
    return vms, seen, result[0]


def test_vms_take_their_snapshots_and_first_clones_while_the_repository_opens(
    tmp_path: Path, monkeypatch: Any
) -> None:
    gate = threading.Event()
    _gated_open(monkeypatch, gate)
    with lab(tmp_path) as L:
        _vms, seen, report = _run_two_vms_with_the_repository_held(L, gate)
        # both snapshots and both clones exist while the repository is still held
        assert seen == ([1, 1], 2)
        assert report.exit_code() == ExitCode.OK
        assert not L.worker_clones()
        for name in ("web01", "web02"):
            _assert_point_matches_snapshot(L, report, name)


def test_a_repository_that_fails_to_open_leaves_no_new_snapshot(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """The snapshots were taken while the repository opened; its failure fails the
    job with the repository's error, and every new snapshot is removed, unretried."""
    from hcbak.errors import LockedError

    gate = threading.Event()
    _gated_open(monkeypatch, gate, LockedError("repository is locked by prune (pid 1)"))
    with lab(tmp_path, retries=2) as L:
        vms, seen, report = _run_two_vms_with_the_repository_held(L, gate)
        assert seen == ([1, 1], 2)  # the path under test: made, then the failure
        assert (report.status, report.exit_code()) == ("locked", ExitCode.BUSY)
        assert "locked by prune" in report.reason
        assert report.vms == []  # the job failed as a whole, as before the change
        L.sim.wait_idle()
        assert [L.hcbak_snapshots(vm) for vm in vms] == [[], []]
        assert not L.worker_clones()
        assert not list((L.tmp / "state" / "clones").glob("*.json"))


def test_a_snapshot_task_that_times_out_stays_journaled_for_the_next_run(
    tmp_path: Path,
) -> None:
    """Unlike a failed task, a slow one may still make its snapshot after we gave up:
    the next run must wait for it before looking for orphans."""
    with lab(tmp_path) as L:
        vm = L.sim.create_vm("slow01", [1 * MiB], tags=["nightly"])
        L.config.clusters["lab"].task_timeout = 0.2
        L.sim.faults.task_delay(1.0)
        report = _run(L)
        assert _vm(report, "slow01").status == "failed"
        assert "did not finish within" in _vm(report, "slow01").reason
        journal = L.tmp / "state" / "tasks"
        assert [p.name for p in journal.glob("*.json") if not p.name.startswith("request-")]
        L.config.clusters["lab"].task_timeout = 30.0
        L.sim.faults.task_delay(0.0)
        assert _vm(_run(L), "slow01").status == "ok"
        # The next run waited for that task, removed what it made, and forgot it.
        assert len(L.hcbak_snapshots(vm)) == 1
        assert list(journal.glob("*.json")) == []
