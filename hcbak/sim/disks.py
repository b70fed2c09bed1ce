"""Disk bytes of the simulated cluster: sparse files, frozen snapshot layers, write log.

Design (docs/simulator.md, "Disks"): every block device owns one *live* file. A
snapshot of a disk is a **hard link** to the live file, taken in O(1): no data is
copied. Before the next guest write to a disk whose live inode is shared (link count
> 1, i.e. a snapshot or a worker clone still points at it), the live file is first
replaced by a sparse copy, so the frozen inode keeps the snapshot's exact bytes. A
clone of a snapshot onto the worker is a hard link to the snapshot's frozen file, so
reading the worker's device runs at page-cache speed and costs no copy at all.

The price is paid once per snapshot epoch by the first guest write (a sparse copy of
the allocated extents), which is the right trade for a simulator: snapshots, clones and
reads - the backup's data path - are free; guest writes are a test-control call.

Changed-block tracking: each disk keeps a write log of byte intervals keyed by the
*epoch* they fell in (the device serial of the disk's newest snapshot at write time,
0 before the first). `snap_diff(a, b)` is the union of epochs a <= e < b (b = 0: live).
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterable
from pathlib import Path

Interval = tuple[int, int]


def merge_intervals(intervals: Iterable[Interval]) -> list[Interval]:
    """Sort and merge touching/overlapping half-open intervals; drop empty ones."""
    out: list[Interval] = []
    for lo, hi in sorted(i for i in intervals if i[1] > i[0]):
        if out and lo <= out[-1][1]:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def sparse_copy(src: Path, dest: Path) -> None:
    """Copy only the data extents of `src` (SEEK_DATA/SEEK_HOLE); holes stay holes."""
    size = src.stat().st_size
    tmp = dest.with_name(dest.name + ".tmp")
    with open(src, "rb") as fin, open(tmp, "wb") as fout:
        fout.truncate(size)
        fd_in, fd_out = fin.fileno(), fout.fileno()
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd_in, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: no more data after pos
                break
            end = os.lseek(fd_in, start, os.SEEK_HOLE)
            _copy_range(fd_in, fd_out, start, end - start)
            pos = end
    os.replace(tmp, dest)


def _copy_range(fd_in: int, fd_out: int, offset: int, length: int) -> None:
    done = 0
    while done < length:
        n = os.copy_file_range(fd_in, fd_out, length - done, offset + done, offset + done)
        if n <= 0:
            raise OSError(f"copy_file_range stalled at {offset + done}")
        done += n


def read_range(path: Path, offset: int, length: int) -> bytes:
    """pread that pads past-EOF reads with zeros (disks are fixed-size sparse files)."""
    with open(path, "rb") as f:
        data = os.pread(f.fileno(), length, offset)
    return data + bytes(length - len(data))


class DiskStore:
    """Files under <state>/disks and the per-disk write log (kept in the JSON state).

    Thread safety: callers hold the simulator's state lock around every mutation.
    """

    def __init__(self, root: Path, device_root: Path) -> None:
        self.root = root
        self.device_root = device_root
        self.by_id = device_root / "disk" / "by-id"
        root.mkdir(parents=True, exist_ok=True)
        self.by_id.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        for leftover in root.glob(".reclaim-*"):  # a stop that came before the reclaimer
            leftover.unlink(missing_ok=True)

    # --- paths --------------------------------------------------------------------
    def live_path(self, disk_uuid: str) -> Path:
        return self.root / f"{disk_uuid}.img"

    def snap_path(self, disk_uuid: str, serial: int) -> Path:
        return self.root / f"{disk_uuid}@{serial}.img"

    def device_path(self, disk_uuid: str) -> Path:
        # Linux names virtio disks by the first 20 characters of their serial, and
        # HyperCore sets the serial to the block device uuid.
        return self.by_id / f"virtio-{disk_uuid[:20]}"

    # --- lifecycle ------------------------------------------------------------------
    def create(self, disk_uuid: str, capacity: int) -> None:
        with open(self.live_path(disk_uuid), "wb") as f:
            f.truncate(capacity)

    def create_from(self, disk_uuid: str, source: Path, capacity: int) -> None:
        """New live disk with the bytes of a frozen file: a hard link when sizes match."""
        live = self.live_path(disk_uuid)
        if source.stat().st_size == capacity:
            os.link(source, live)
        else:
            sparse_copy(source, live)
            os.truncate(live, capacity)

    def delete(self, disk_uuid: str) -> None:
        """Remove the live file and the device link; snapshot layers stay (own inodes)."""
        for p in (self.live_path(disk_uuid), self.device_path(disk_uuid)):
            try:
                p.unlink()
            except FileNotFoundError:
                pass

    def attach_device(self, disk_uuid: str) -> Path:
        """Expose a disk attached to the worker at <dev>/disk/by-id/virtio-<uuid[:20]>.

        A symlink like on Linux; it follows the live file, which for a clone is the
        snapshot's frozen inode until someone writes to the clone.
        """
        dev = self.device_path(disk_uuid)
        tmp = dev.with_name(dev.name + ".tmp")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(self.live_path(disk_uuid).resolve())
        os.replace(tmp, dev)
        return dev

    def resize(self, disk_uuid: str, capacity: int) -> None:
        self._unshare(disk_uuid)
        os.truncate(self.live_path(disk_uuid), capacity)

    # --- snapshots ------------------------------------------------------------------
    def freeze(self, disk_uuid: str, serial: int) -> None:
        """Snapshot layer for `serial`: a hard link, O(1) whatever the disk size."""
        os.link(self.live_path(disk_uuid), self.snap_path(disk_uuid, serial))

    def drop_layer(self, disk_uuid: str, serial: int) -> None:
        """Forget a snapshot layer now; free its space in the background.

        Unlinking a multi-GiB file also evicts its cached pages, which takes seconds; a
        cluster reclaims space asynchronously too, so the delete task does not wait."""
        layer = self.snap_path(disk_uuid, serial)
        doomed = layer.with_name(f".reclaim-{uuid.uuid4().hex}")
        try:
            os.rename(layer, doomed)
        except FileNotFoundError:
            return
        threading.Thread(target=doomed.unlink, kwargs={"missing_ok": True}, daemon=True).start()

    # --- guest I/O ------------------------------------------------------------------
    def write(self, disk_uuid: str, offset: int, data: bytes) -> None:
        with self._lock:
            self._unshare(disk_uuid)
            fd = os.open(self.live_path(disk_uuid), os.O_WRONLY)
            try:
                os.pwrite(fd, data, offset)
            finally:
                os.close(fd)

    def _unshare(self, disk_uuid: str) -> None:
        """Copy-on-write at file level: give the live disk its own inode before a write."""
        live = self.live_path(disk_uuid)
        if live.stat().st_nlink > 1:
            sparse_copy(live, live)  # writes a temp copy, then renames it over `live`
