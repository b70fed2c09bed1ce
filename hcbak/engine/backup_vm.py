"""One VM's backup: snapshot, every disk into the repository, commit, clean up.

Per VM (design.md "The data path of one backup run"): snapshot `hcbak:<job>:<point
id>` (replication false), or for a replication target its newest replicated snapshot
(never taken or deleted by hcbak); each disk through backup_disk.py; the point commits
(save_point writes the manifest after the data); then the previous hcbak snapshot goes
(the new one is the next base). On any failure the new snapshot and clones are removed
and the old base is kept; the VM is retried `retries` times after `retry_wait` while
the other VMs continue.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, wait
from typing import TYPE_CHECKING

from hcbak import __version__
from hcbak.engine import cbt
from hcbak.engine.backup_disk import back_up_disk, snapshot_capacity
from hcbak.engine.report import VM_FAILED, VM_OK, VM_SKIPPED, DiskReport, VmReport, utcnow
from hcbak.engine.session import Session, label_point_id, snapshot_label
from hcbak.engine.state import (
    forget_snapshot_request,
    forget_task,
    journal_snapshot_request,
    journal_task,
)
from hcbak.errors import (
    HcbakError,
    NotFoundError,
    QuiesceRefusedError,
    TaskFailedError,
    TaskTimeoutError,
)
from hcbak.hypercore.quiesce import CRASH, plan_quiesce

if TYPE_CHECKING:
    from hcbak.engine.selection import VmTarget
    from hcbak.hypercore.records import VM, Snapshot
    from hcbak.repo import DiskImage
    from hcbak.transport.hotadd import HotAdd

log = logging.getLogger("hcbak.engine")


def back_up_vm(s: Session, target: VmTarget) -> VmReport:
    """One VM: its attempts (retried `retries` times after `retry_wait`), its report."""
    vm = target.vm
    report = VmReport(vm.name, vm.uuid, started=utcnow())
    report.source = "replica snapshot" if target.replica else "snapshot"
    s.emit("vm_start", vm=vm.name, message=f"{len(target.disks)} disk(s)")
    for skipped in target.skipped:
        if skipped.warning:
            s.warn_vm(report, f"disk slot {skipped.slot}: {skipped.reason}")
    t0 = time.monotonic()
    attempts = 1 + max(0, int(s.job.retries))
    for attempt in range(1, attempts + 1):
        if s.cancel.is_set():
            report.status, report.reason = VM_FAILED, s.stop_reason
            break
        report.attempts = attempt
        try:
            _attempt(s, target, report)
            report.status = VM_OK
            report.reason = ""
            break
        except Exception as exc:  # every failure of one VM is that VM's, not the run's
            reason = (
                exc.one_line() if isinstance(exc, HcbakError) else f"{type(exc).__name__}: {exc}"
            )
            log.error(
                "%s: attempt %d failed: %s",
                vm.name,
                attempt,
                reason,
                exc_info=not isinstance(exc, HcbakError),
            )
            report.status = VM_FAILED
            report.reason = reason
            if attempt < attempts and not s.cancel.is_set():
                s.emit(
                    "vm_retry",
                    vm=vm.name,
                    message=f"attempt {attempt} failed: {reason}; "
                    f"retrying in {s.job.retry_wait:g} s",
                )
                if s.cancel.wait(float(s.job.retry_wait)):
                    break
    report.duration = time.monotonic() - t0
    done = f"point {report.point_id}" if report.status == VM_OK else f"failed: {report.reason}"
    s.emit("vm_done", vm=vm.name, message=done)
    return report


def _attempt(s: Session, target: VmTarget, report: VmReport) -> None:
    """Snapshot, clone and read every disk, commit; on failure remove what it made."""
    from hcbak.repo.points import new_point_id  # no need to wait for the repository

    vm = target.vm
    report.disks = []
    report.timings = type(report.timings)()
    point_id = new_point_id()
    if target.replica:
        snap = newest_replica_snapshot(s, vm)
        created = False
        report.consistency = CRASH  # hcbak did not take it: nothing says it was quiesced
        if s.job.quiesce:
            s.warn_vm(
                report,
                "crash-consistent: a replica is backed up from its newest replicated "
                "snapshot, which hcbak cannot quiesce",
            )
    else:
        label = snapshot_label(s.job.name, point_id)
        snap, report.consistency = create_snapshot(s, vm, label, report)
        created = True
    report.snapshot_uuid = snap.uuid
    # Clones are removed in the background while the point commits; every removal
    # has ended before this attempt returns (or is retried).
    removals: list[Future[None]] = []
    early: HotAdd | None = None
    try:
        try:
            if target.disks and not s.bases_ready.is_set():
                # The repository still opens: clone the first disk meanwhile.
                first = target.disks[0]
                capacity = snapshot_capacity(snap, first)
                early = s.hotadd(first, snap, capacity, removals)
                early.open()
            s.await_bases()
            previous = s.previous_point(vm.uuid)
            images = [
                back_up_disk(
                    s, vm, disk, snap, previous, report, removals, early if i == 0 else None
                )
                for i, disk in enumerate(target.disks)
            ]
            _commit(s, vm, snap, point_id, images, report)
        except BaseException:
            if early is not None and not early.handed_over:
                early.close()
            if created:
                delete_snapshot_quietly(s, snap.uuid, report)
            raise
        report.point_id = point_id
        if previous is not None and previous.snapshot_uuid and previous.snapshot_uuid != snap.uuid:
            old = s.snapshots.get(previous.snapshot_uuid)
            if old is not None and label_point_id(old.label, s.job.name) is not None:
                delete_snapshot_quietly(s, old.uuid, report, warn=True)
    finally:
        wait(removals)


def create_snapshot(s: Session, vm: VM, label: str, report: VmReport) -> tuple[Snapshot, str]:
    """The VM's snapshot and its consistency ("application" or "crash").

    A `quiesce` job asks for an application-consistent snapshot where the cluster
    and the VM's guest agent allow it (hypercore/quiesce.py) and warns for this VM
    where not; a cluster that refuses the request gets a crash-consistent one.

    The snapshot task is journaled while it runs (see tasks_of_dead_runs). It
    stays journaled when we cannot know it ended (a timeout, a lost connection):
    the next run waits for it before it looks for orphans."""
    plan = plan_quiesce(bool(s.job.quiesce), s.cluster_version, vm.guest_agent_state)
    if plan.warning:
        s.warn_vm(report, plan.warning)
    consistency = plan.consistency
    started: list[str] = []

    def accepted(task: str) -> None:
        journal_task(s.state_dir, task, s.job.cluster)
        started.append(task)

    def settled() -> None:
        for task in started:
            forget_task(s.state_dir, task)
        forget_snapshot_request(s.state_dir, label)

    journal_snapshot_request(s.state_dir, s.job.cluster, vm.uuid, label)
    try:
        try:
            snap = s.hc.create_snapshot(
                vm.uuid, label, accepted=accepted, quiesce=plan.attempt, new_label=True
            )
        except QuiesceRefusedError as exc:
            s.warn_vm(
                report,
                "crash-consistent snapshot: the cluster refused the quiesced snapshot "
                f"request ({exc.one_line()})",
            )
            consistency = CRASH
            snap = s.hc.create_snapshot(vm.uuid, label, accepted=accepted)
    except TaskFailedError as exc:
        if not isinstance(exc, TaskTimeoutError):  # it ended in ERROR: nothing to await
            settled()
        raise
    settled()
    return snap, consistency


def newest_replica_snapshot(s: Session, vm: VM) -> Snapshot:
    """A replication target's newest snapshot: the source we back it up from."""
    snaps = s.hc.list_snapshots(vm.uuid)
    if not snaps:
        raise HcbakError(f"replica VM {vm.name} has no replicated snapshot yet")
    order = {u: i for i, u in enumerate(vm.snap_uuids)}  # snapUUIDs: oldest first
    return max(snaps, key=lambda snap: (order.get(snap.uuid, -1), snap.timestamp))


def delete_snapshot_quietly(s: Session, uuid: str, report: VmReport, *, warn: bool = False) -> None:
    try:
        s.hc.delete_snapshot(uuid)
        s.snapshots.pop(uuid, None)
        log.info("%s: deleted snapshot %s", report.name, uuid)
    except NotFoundError:
        pass
    except HcbakError as exc:
        message = f"could not delete snapshot {uuid}: {exc.one_line()} (removed next run)"
        if warn:
            s.warn_vm(report, message)
        else:
            log.warning("%s: %s", report.name, message)


def _commit(
    s: Session, vm: VM, snap: Snapshot, point_id: str, images: list[DiskImage], report: VmReport
) -> None:
    from hcbak.repo import Point

    definition = dict(snap.domain.raw) if snap.domain is not None else dict(vm.raw)
    totals = report.totals()
    point = Point(
        id=point_id,
        job=s.job.name,
        cluster=s.job.cluster,
        vm_uuid=vm.uuid,
        vm_name=vm.name,
        created=utcnow(),
        vm=definition,
        snapshot_uuid=snap.uuid,
        snapshot_label=snap.label,
        consistency=report.consistency or CRASH,
        disks=images,
        stats={
            **totals,
            "source": report.source,
            "incremental": all(i.incremental for i in images) if images else False,
        },
        hcbak_version=__version__,
    )
    s.repo.save_point(point)  # the commit: manifest written after its data


def dry_run_vm(s: Session, target: VmTarget) -> VmReport:
    """What a backup of the VM would read, and why (--dry-run): nothing is made."""
    vm = target.vm
    report = VmReport(vm.name, vm.uuid, status=VM_SKIPPED, reason="dry run")
    report.source = "replica snapshot" if target.replica else "snapshot"
    previous = s.latest.get(vm.uuid)
    for disk in target.disks:
        d = DiskReport(disk.uuid, int(disk.slot), str(disk.type), int(disk.capacity))
        d.status = VM_SKIPPED
        has_base = previous is not None and previous.snapshot_uuid in s.snapshots
        d.cbt_used = has_base and not s.full
        d.cbt_reason = (
            cbt.REASON_FORCED_FULL if s.full else ("snapDiff" if has_base else cbt.REASON_NO_BASE)
        )
        report.disks.append(d)
    report.warnings += [f"disk slot {x.slot}: {x.reason}" for x in target.skipped if x.warning]
    s.emit(
        "vm_done",
        vm=vm.name,
        message="dry run: would back up "
        + ", ".join(f"slot {d.slot} ({d.cbt_reason})" for d in report.disks),
    )
    return report
