"""A read-only FUSE filesystem over one restore point (what `hcbak mount` mounts).

Layout: one directory per disk (`disk<slot>`, or `nvram`/`vtpm` for slot -1 devices)
holding `disk.raw`, plus `point.json` with the point's metadata. Blocks are read from
the repository on demand through `MountedDisk`, which keeps the last few decoded
blocks. The CLI (cli/mount.py) checks the mount point, opens the repository and runs
the FUSE loop; this module only builds the filesystem.

FUSE binding: `mfusepy`, the maintained fork of fusepy (ctypes over libfuse 2 or 3, no
compiler needed, pure-Python wheel). It is an optional extra (`pip install
'hcbak[mount]'`) because it needs the system's libfuse; docs/restore.md says why it
was chosen over pyfuse3 (needs trio + compiled libfuse3 headers) and llfuse.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

from hcbak.engine.point_reader import zero_block
from hcbak.errors import HcbakError, UsageError

if TYPE_CHECKING:
    from hcbak.repo import DiskImage, Point, Repository


class MountedDisk:
    """Random-access reads of one disk of a point.

    Keeps the last few decoded blocks (sequential reads by `cp`/`losetup` hit the same
    block many times in 128 KiB pieces). Thread safe: FUSE calls from several threads.
    """

    def __init__(self, repo: Repository, disk: DiskImage, cache_blocks: int = 16) -> None:
        self.repo = repo
        self.disk = disk
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cache_blocks = cache_blocks
        self._lock = threading.Lock()

    def read(self, offset: int, size: int) -> bytes:
        """Up to `size` bytes at `offset`; short only at the end of the disk."""
        end = min(self.disk.capacity, offset + size)
        out = bytearray()
        bs = self.disk.block_size
        while offset < end:
            index, within = divmod(offset, bs)
            take = min(bs - within, end - offset)
            out += self._block(index)[within : within + take]
            offset += take
        return bytes(out)

    def _block(self, index: int) -> bytes:
        from hcbak.repo import ZERO_BLOCK

        block_id = self.disk.block_map.get(index)
        if block_id == ZERO_BLOCK:
            return zero_block(self.disk.block_size)
        with self._lock:
            if index in self._cache:
                self._cache.move_to_end(index)
                return self._cache[index]
        data = self.repo.get_block(block_id)
        with self._lock:
            self._cache[index] = data
            while len(self._cache) > self._cache_blocks:
                self._cache.popitem(last=False)
        return data


def import_fuse() -> ModuleType:
    """The FUSE binding, or a usage error that says how to install it."""
    try:
        import mfusepy
    except (ImportError, OSError) as exc:  # OSError: libfuse itself is missing
        raise UsageError(
            f"hcbak mount needs FUSE support ({exc})",
            hint="pip install 'hcbak[mount]' and install libfuse (fuse3 or fuse package)",
        )
    binding: ModuleType = mfusepy
    return binding


def disk_readers(repository: Repository, point: Point) -> dict[str, MountedDisk]:
    """Directory name -> reader, one per disk of the point."""
    out: dict[str, MountedDisk] = {}
    for disk in point.disks:
        name = f"disk{disk.slot}" if disk.slot >= 0 else disk.type.lower()
        if name in out:
            name = f"{name}-{disk.uuid[:8]}"
        out[name] = MountedDisk(repository, disk)
    return out


def point_metadata(point: Point, readers: dict[str, MountedDisk]) -> bytes:
    """The contents of `point.json`."""
    meta = {
        "id": point.id,
        "vm_name": point.vm_name,
        "vm_uuid": point.vm_uuid,
        "created": point.created.isoformat(),
        "disks": {
            name: {
                "uuid": r.disk.uuid,
                "slot": r.disk.slot,
                "type": r.disk.type,
                "capacity": r.disk.capacity,
            }
            for name, r in readers.items()
        },
    }
    return json.dumps(meta, indent=2).encode() + b"\n"


def point_filesystem(
    fuse: ModuleType,
    point: Point,
    readers: dict[str, MountedDisk],
    on_read_error: Callable[[str], None],
) -> object:
    """A read-only FUSE filesystem (a `fuse.Operations`) over the point's disks.

    A damaged or missing block is EIO for the reader; `on_read_error` gets the reason
    (the CLI shows it on stderr)."""
    meta = point_metadata(point, readers)
    stamp = int((point.created.timestamp() if point.created else time.time()) * 1e9)

    def file_attr(size: int) -> dict[str, Any]:
        return {
            "st_mode": stat.S_IFREG | 0o444,
            "st_nlink": 1,
            "st_size": size,
            "st_mtime": stamp,
            "st_ctime": stamp,
            "st_atime": stamp,
        }

    dir_attr = {
        "st_mode": stat.S_IFDIR | 0o555,
        "st_nlink": 2,
        "st_mtime": stamp,
        "st_ctime": stamp,
        "st_atime": stamp,
    }

    class PointFS(fuse.Operations):  # type: ignore[name-defined,misc]
        use_ns = True  # times below are nanoseconds (mfusepy warns otherwise)

        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            parts = [p for p in path.split("/") if p]
            if not parts:
                return dir_attr
            if parts == ["point.json"]:
                return file_attr(len(meta))
            if parts[0] in readers:
                if len(parts) == 1:
                    return dir_attr
                if parts[1:] == ["disk.raw"]:
                    return file_attr(readers[parts[0]].disk.capacity)
            raise fuse.FuseOSError(errno.ENOENT)

        def readdir(self, path: str, fh: int) -> list[str]:
            parts = [p for p in path.split("/") if p]
            if not parts:
                return [".", "..", "point.json", *readers]
            if len(parts) == 1 and parts[0] in readers:
                return [".", "..", "disk.raw"]
            raise fuse.FuseOSError(errno.ENOENT)

        def open(self, path: str, flags: int) -> int:
            if flags & (os.O_WRONLY | os.O_RDWR):
                raise fuse.FuseOSError(errno.EROFS)
            self.getattr(path)
            return 0

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            parts = [p for p in path.split("/") if p]
            if parts == ["point.json"]:
                return meta[offset : offset + size]
            if len(parts) == 2 and parts[0] in readers and parts[1] == "disk.raw":
                try:
                    return readers[parts[0]].read(offset, size)
                except HcbakError as exc:  # damaged/missing block: EIO, reason on stderr
                    on_read_error(f"{path} at {offset}: {exc.one_line()}")
                    raise fuse.FuseOSError(errno.EIO)
            raise fuse.FuseOSError(errno.ENOENT)

    return PointFS()
