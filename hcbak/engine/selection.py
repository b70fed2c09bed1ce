"""Which VMs and disks a job backs up, resolved at run time from the cluster's VM list.

Pure: takes VM records and the job config, returns targets plus warnings and the
named VMs that do not exist (those fail the run for that VM; design.md: a missing VM
is an error, not a warning). Disk rules follow hypercore-api.md: data disks and the
small UEFI NVRAM/VTPM state are kept, CD-ROMs/floppies are skipped, disks with
snapshotting disabled cannot be captured consistently and are skipped with a warning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

from hcbak.config import FILTER_DISK_TYPES

if TYPE_CHECKING:
    from hcbak.hypercore.records import VM, Disk

DATA_DISK_TYPES = frozenset(FILTER_DISK_TYPES)
# UEFI/TPM VMs do not boot the same without these (hypercore-api.md "More shape facts").
STATE_DISK_TYPES = frozenset({"NVRAM", "VTPM"})
REMOVABLE_TYPES = frozenset({"IDE_CDROM", "IDE_FLOPPY"})
_FILTERED = "excluded by the job's disk filter"


class JobLike(Protocol):
    vms: list[str]
    tags: list[str]
    exclude: list[str]
    disks: list[str]


@dataclass
class SkippedDisk:
    """A disk left out of a VM's backup, with the reason the report gives."""

    uuid: str
    slot: int
    type: str
    reason: str
    warning: bool


@dataclass
class VmTarget:
    """One VM to back up, with the disks to read and those skipped (with reasons)."""

    vm: VM
    disks: list[Disk]
    skipped: list[SkippedDisk] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.vm.name)

    @property
    def replica(self) -> bool:
        return bool(self.vm.is_replica)


@dataclass
class Selection:
    """The VMs a job resolves to at run time, and what it could not resolve."""

    targets: list[VmTarget]
    missing: list[str]  # VMs named in the job that the cluster does not have
    warnings: list[str]


def select_vms(vms: Sequence[VM], job: JobLike, *, worker_vm_uuid: str | None = None) -> Selection:
    """Resolve names/uuids and tags minus exclusions into VM targets, in name order."""
    warnings: list[str] = []
    by_key: dict[str, VM] = {}
    for vm in vms:
        by_key.setdefault(vm.uuid, vm)
        by_key.setdefault(vm.name, vm)
    chosen: dict[str, VM] = {}
    missing: list[str] = []
    for wanted in job.vms:
        named = by_key.get(wanted)
        if named is None:
            missing.append(wanted)
        else:
            chosen[named.uuid] = named
    for tag in job.tags:
        tagged = [vm for vm in vms if tag in vm.tags]
        if not tagged:
            warnings.append(f"tag {tag!r} matches no VM")
        for vm in tagged:
            chosen[vm.uuid] = vm
    excluded = set(job.exclude)
    result: list[VmTarget] = []
    for vm in sorted(chosen.values(), key=lambda v: (v.name, v.uuid)):
        if vm.uuid in excluded or vm.name in excluded:
            continue
        if worker_vm_uuid and vm.uuid == worker_vm_uuid:
            # Its disks include our own hot-added clones; backing it up is never meant.
            warnings.append(f"{vm.name}: the worker VM is not backed up")
            continue
        result.append(select_disks(vm, job.disks))
    if not result and not missing:
        warnings.append("the job selects no VM")
    return Selection(result, missing, warnings)


def select_disks(vm: VM, disk_filter: Sequence[str]) -> VmTarget:
    """Apply the type rules and the job's per-disk filter (slots or disk types)."""
    target = VmTarget(vm, [])
    wanted = {str(item).upper() for item in disk_filter}
    for disk in sorted(vm.disks, key=lambda d: (d.slot, d.uuid)):
        kind = str(disk.type).upper()
        if kind in REMOVABLE_TYPES:
            target.skipped.append(_skip(disk, "CD-ROM/floppy not backed up", warning=False))
        elif kind not in DATA_DISK_TYPES | STATE_DISK_TYPES:
            target.skipped.append(_skip(disk, f"unknown disk type {disk.type}", warning=True))
        elif getattr(disk, "disable_snapshotting", False):
            target.skipped.append(_skip(disk, "snapshots disabled on this disk", warning=True))
        elif wanted and kind in DATA_DISK_TYPES and not _filter_matches(disk, wanted):
            target.skipped.append(_skip(disk, _FILTERED, warning=False))
        else:
            target.disks.append(disk)
    if wanted and not any(str(d.type).upper() in DATA_DISK_TYPES for d in target.disks):
        # The filter names no data disk this VM has: say so, never a silent empty backup.
        why = f"excluded: the disk filter ({', '.join(sorted(wanted))}) matches no data disk"
        target.skipped = [
            replace(s, reason=why, warning=True) if s.reason == _FILTERED else s
            for s in target.skipped
        ]
    return target


def _filter_matches(disk: Disk, wanted: set[str]) -> bool:
    return (
        str(disk.slot) in wanted
        or str(disk.type).upper() in wanted
        or str(disk.uuid).upper() in wanted
    )


def _skip(disk: Disk, reason: str, *, warning: bool) -> SkippedDisk:
    return SkippedDisk(disk.uuid, int(disk.slot), str(disk.type), reason, warning)
