"""One disk's backup: plan what to read, clone it onto the worker, read it in.

The base is the disk's serial in the VM's latest point of this job: if that snapshot
still exists and nothing forbids it, snapDiff(base -> new) gives the changed blocks,
else a full read with the reason (cbt.py). Blocks whose stored copy is known damaged
are read again even when unchanged, and so are those the index cannot find while a
segment of it is unreadable. The snapshot disk is hot-added to the worker
(transport/hotadd.py) and read through the pipeline (pipeline.py) into the repository.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING

from hcbak.engine import cbt, pipeline
from hcbak.engine.report import DiskReport, VmReport
from hcbak.errors import HcbakError
from hcbak.transport.reader import DiskReader

if TYPE_CHECKING:
    from hcbak.engine.session import Session
    from hcbak.hypercore.records import VM, Disk, Snapshot
    from hcbak.repo import DiskImage, Point
    from hcbak.transport.hotadd import HotAdd

log = logging.getLogger("hcbak.engine")


def back_up_disk(
    s: Session,
    vm: VM,
    disk: Disk,
    snap: Snapshot,
    previous: Point | None,
    report: VmReport,
    removals: list[Future[None]] | None = None,
    clone: HotAdd | None = None,
) -> DiskImage:
    """One disk into the repository; `clone` is its clone when already made."""
    from hcbak.repo import DiskImage

    block_size = int(s.repo.config.block_size)
    capacity = snapshot_capacity(snap, disk)
    disk_report = DiskReport(disk.uuid, int(disk.slot), str(disk.type), capacity)
    report.disks.append(disk_report)
    base = _find_disk(previous, disk.uuid)
    plan = _plan(s, disk, snap, previous, base, capacity, block_size)
    label = f"slot {disk.slot}"
    prev_map = base.block_map if base is not None and base.capacity == capacity else None
    if plan.incremental and prev_map is not None:
        heal = s.repo.unchanged_to_read_again(prev_map)
        if heal:  # unchanged, but no usable stored copy: read and store again
            log.info("disk %s: %d unchanged blocks read again", label, len(heal))
            plan = cbt.with_blocks(plan, heal)
    if plan.reason in cbt.UNEXPECTED_FALLBACKS:
        s.warn_vm(report, f"disk {label}: full read, {plan.reason}")
    s.emit(
        "disk_start",
        vm=vm.name,
        disk=label,
        total=plan.blocks_to_read * block_size,
        message=plan.reason,
    )
    t0 = time.monotonic()
    clone = clone if clone is not None else s.hotadd(disk, snap, capacity, removals)
    with clone as path, DiskReader(path) as reader:
        result = pipeline.back_up_disk(
            reader,
            s.repo,
            plan,
            prev_map,
            disk_report,
            block_size=block_size,
            threads=s.threads,
            progress=lambda n: s.emit("disk_progress", vm=vm.name, disk=label, done=n),
            cancel=s.cancel,
        )
    disk_report.duration = time.monotonic() - t0
    report.timings.add(result.timings)
    s.emit(
        "disk_done",
        vm=vm.name,
        disk=label,
        message=f"{disk_report.blocks_read} blocks read, "
        f"{disk_report.blocks_new} new ({plan.reason})",
    )
    return DiskImage(
        uuid=disk.uuid,
        slot=int(disk.slot),
        type=str(disk.type),
        capacity=capacity,
        block_size=block_size,
        block_map=result.block_map,
        serial=snap.serial_for(disk.uuid),
        incremental=plan.incremental,
        cbt_reason=plan.reason,
    )


def snapshot_capacity(snap: Snapshot, disk: Disk) -> int:
    """The disk's size when the snapshot was taken (its own domain has the disk as it
    was then), else the disk's size now."""
    if snap.domain is not None:
        frozen = snap.domain.disk(disk.uuid)
        if frozen is not None and frozen.capacity:
            return int(frozen.capacity)
    return int(disk.capacity)


def _plan(
    s: Session,
    disk: Disk,
    snap: Snapshot,
    previous: Point | None,
    base: DiskImage | None,
    capacity: int,
    block_size: int,
) -> cbt.ReadPlan:
    """Incremental from snapDiff when the base allows it, else full with the reason."""
    reason = None
    if s.full:
        reason = cbt.REASON_FORCED_FULL
    elif base is None or previous is None:
        reason = cbt.REASON_NO_BASE
    elif base.capacity != capacity:
        reason = cbt.REASON_RESIZED
    elif base.block_size != block_size:
        reason = cbt.REASON_BLOCK_SIZE
    elif previous.snapshot_uuid != snap.uuid and previous.snapshot_uuid not in s.snapshots:
        reason = cbt.REASON_BASE_DELETED
    elif base.serial is None or snap.serial_for(disk.uuid) is None:
        reason = cbt.REASON_NO_SERIAL
    if reason is not None or base is None:
        return cbt.full_plan(capacity, block_size, reason or cbt.REASON_NO_BASE)
    try:
        serial = snap.serial_for(disk.uuid)
        assert serial is not None and base.serial is not None  # checked above
        intervals = s.hc.snap_diff(disk.uuid, int(base.serial), int(serial))
    except HcbakError as exc:
        log.warning("snapDiff of disk %s failed: %s", disk.uuid, exc.one_line())
        return cbt.full_plan(capacity, block_size, cbt.REASON_SNAPDIFF_ERROR)
    return cbt.incremental_plan(intervals, capacity, block_size)


def _find_disk(point: Point | None, disk_uuid: str) -> DiskImage | None:
    if point is None:
        return None
    return next((d for d in point.disks if d.uuid == disk_uuid), None)
