"""Restore one disk of a point to a file, a block device or a stream (`restore disk`).

raw files are sparse, qcow2 comes from hcbak's writer, vmdk/vhdx go through
`qemu-img convert`. A new file is written under a "partial" name and linked into
place only once complete: a killed restore never leaves a file that looks whole.

The caller holds the repository's shared lock for the whole restore, so a prune (which
needs the exclusive lock) cannot remove blocks of the point half-way.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from hcbak.engine.point_reader import (
    Progress,
    clip,
    disk_label,
    fetch_blocks,
    no_progress,
    qcow2_stream,
    stored_blocks,
    zero_block,
)
from hcbak.errors import NotFoundError, TransportError, UsageError
from hcbak.repo.fsio import pwrite_all
from hcbak.repo.holders import pid_alive

if TYPE_CHECKING:
    from hcbak.repo import DiskImage, Point, Repository

FORMATS = ("raw", "qcow2", "vmdk", "vhdx")


@dataclass
class DiskResult:
    """What one disk restore did (for the summary and --json)."""

    uuid: str
    slot: int
    type: str
    capacity: int
    format: str
    destination: str
    bytes_written: int  # bytes of data written or sent (zero blocks excluded)
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def select_disk(point: Point, selector: str) -> DiskImage:
    """The disk of `point` named by slot number, uuid or unique uuid prefix."""
    disks = list(point.disks)
    if selector.lstrip("-").isdigit():
        matches = [d for d in disks if d.slot == int(selector)]
    else:
        matches = [d for d in disks if d.uuid == selector] or [
            d for d in disks if d.uuid.startswith(selector)
        ]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(f"slot {d.slot} ({d.type}, {d.uuid})" for d in disks) or "none"
    if not matches:
        raise NotFoundError(f"point {point.id} has no disk {selector!r}", hint=f"disks: {known}")
    raise UsageError(f"disk {selector!r} is ambiguous in point {point.id}", hint=f"disks: {known}")


def restore_disk(
    repo: Repository,
    point: Point,
    disk_selector: str,
    dest: Path | BinaryIO,
    fmt: str = "raw",
    progress: Progress | None = None,
) -> DiskResult:
    """Write one disk of `point` to `dest` (a path, or a binary stream for raw output).

    raw files are sparse (zero blocks are holes); qcow2 comes from hcbak's writer;
    vmdk/vhdx go through `qemu-img convert` from a sparse raw temp file next to `dest`.
    A new file that fails half-way is removed.
    """
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}", hint="use raw, qcow2, vmdk or vhdx")
    disk = select_disk(point, disk_selector)
    report = progress or no_progress
    started = time.monotonic()
    if not isinstance(dest, Path):
        if fmt != "raw":
            raise UsageError("only raw can be streamed to stdout", hint="use --format raw")
        written = _write_raw_stream(repo, disk, dest, report)
        where = "-"
    else:
        written = _write_file(repo, disk, dest, fmt, report)
        where = str(dest)
    return DiskResult(
        uuid=disk.uuid,
        slot=disk.slot,
        type=disk.type,
        capacity=disk.capacity,
        format=fmt,
        destination=where,
        bytes_written=written,
        seconds=time.monotonic() - started,
    )


def check_destination(dest: Path) -> bool:
    """Whether `dest` is a block device (written in place); else it must be a new file
    in a folder we can write to. Checked before the repository opens, so a typo in
    --to costs no scrypt and no read."""
    try:
        if stat.S_ISBLK(dest.stat().st_mode):
            return True
        raise UsageError(f"{dest} already exists", hint="remove it or choose another path")
    except (FileNotFoundError, NotADirectoryError):
        pass
    folder = dest.parent
    if not folder.is_dir():
        raise UsageError(f"folder {folder} does not exist", hint="create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write to folder {folder}: permission denied")
    return False


def _write_file(repo: Repository, disk: DiskImage, dest: Path, fmt: str, report: Progress) -> int:
    if check_destination(dest):  # a device is written in place; it cannot be renamed into
        return _write_raw_file(repo, disk, dest, report, is_device=True)
    _remove_dead_partials(dest)
    # Everything is written under a name that says "partial" and only linked to `dest`
    # once complete: a killed restore never leaves a file that looks whole. No fsync (as
    # cp, dd and restic): the page cache survives a killed process, and a restore cut by
    # power loss is rerun; `sync` after it when the image must be on disk at once.
    partial = dest.with_name(f".{dest.name}.hcbak-partial-{os.getpid()}")
    try:
        if fmt in ("vmdk", "vhdx"):
            written = _write_converted(repo, disk, partial, fmt, report)
        elif fmt == "qcow2":
            with open(partial, "xb") as out:
                written = _write_qcow2(repo, disk, out, report)
        else:
            written = _write_raw_file(repo, disk, partial, report, is_device=False)
        try:
            os.link(partial, dest)  # fails rather than replace a file created meanwhile
        except FileExistsError:
            raise UsageError(f"{dest} already exists", hint="remove it or choose another path")
        return written
    except OSError as exc:
        if exc.filename not in (None, str(partial)):
            raise
        # Name the file the operator asked for, not our temp name or nothing (pwrite).
        raise OSError(exc.errno, exc.strerror, str(dest)) from exc
    finally:
        partial.unlink(missing_ok=True)


def _remove_dead_partials(dest: Path) -> None:
    """Partial files of earlier restores to `dest` whose process is gone (kill -9)."""
    prefix = f".{dest.name}.hcbak-partial-"
    for leftover in dest.parent.glob(prefix + "*"):
        pid = leftover.name[len(prefix) :].split(".")[0]  # "<pid>" or "<pid>.raw"
        if pid.isdigit() and not pid_alive(int(pid)):
            leftover.unlink(missing_ok=True)


def _write_raw_file(
    repo: Repository, disk: DiskImage, dest: Path, report: Progress, is_device: bool
) -> int:
    """Sparse raw: pwrite the stored blocks, leave holes for zero blocks, then size it.

    A block device cannot have holes and may hold old data, so zero blocks are written
    there explicitly.
    """
    flags = os.O_WRONLY | (0 if is_device else os.O_CREAT | os.O_EXCL)
    fd = os.open(dest, flags, 0o600)
    try:
        if not is_device:
            os.ftruncate(fd, disk.capacity)
        indexes = range(len(disk.block_map)) if is_device else stored_blocks(disk)
        written = 0
        for index, data in fetch_blocks(repo, disk, indexes):
            offset = index * disk.block_size
            chunk = clip(data, disk.capacity - offset)
            pwrite_all(fd, chunk, offset)
            written += len(chunk) if data is not zero_block(disk.block_size) else 0
            report(disk_label(disk), min(disk.capacity, offset + disk.block_size), disk.capacity)
        report(disk_label(disk), disk.capacity, disk.capacity)
        return written
    finally:
        os.close(fd)


def _write_raw_stream(repo: Repository, disk: DiskImage, out: BinaryIO, report: Progress) -> int:
    """Raw bytes to a stream in order (stdout): zero blocks are written as zeros."""
    written = 0
    for index, data in fetch_blocks(repo, disk, range(len(disk.block_map))):
        offset = index * disk.block_size
        chunk = clip(data, disk.capacity - offset)
        out.write(chunk)
        written += len(chunk) if data is not zero_block(disk.block_size) else 0
        report(disk_label(disk), min(disk.capacity, offset + disk.block_size), disk.capacity)
    out.flush()
    return written


def _write_qcow2(repo: Repository, disk: DiskImage, out: BinaryIO, report: Progress) -> int:
    layout, chunks = qcow2_stream(repo, disk, report)
    sent = 0
    for chunk in chunks:
        out.write(chunk)
        sent += len(chunk)
    if sent != layout.total_size:  # the writer guarantees it; a mismatch is a bug
        raise TransportError(f"qcow2 length {sent} differs from planned {layout.total_size}")
    return layout.data_clusters * layout.cluster_size


def _write_converted(
    repo: Repository, disk: DiskImage, dest: Path, fmt: str, report: Progress
) -> int:
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        raise UsageError(
            f"--format {fmt} needs qemu-img, which is not installed",
            hint="install qemu-utils (Debian/Ubuntu) or qemu-img (RHEL), or use raw/qcow2",
        )
    temp = dest.with_name(f"{dest.name}.raw")
    try:
        written = _write_raw_file(repo, disk, temp, report, is_device=False)
        proc = subprocess.run(
            [qemu_img, "convert", "-f", "raw", "-O", fmt, str(temp), str(dest)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            dest.unlink(missing_ok=True)
            detail = " ".join(proc.stderr.split())[:300]
            raise TransportError(f"qemu-img convert to {fmt} failed: {detail}")
        return written
    finally:
        temp.unlink(missing_ok=True)
