"""`hcbak mount POINT MOUNTPOINT`: a read-only FUSE view of a restore point.

Layout: one directory per disk (`disk<slot>`, or `nvram`/`vtpm` for slot -1 devices)
holding `disk.raw`, plus `point.json` with the point's metadata. An operator can then
`losetup -r -P` a disk.raw, `mount -o ro` a partition and copy single files out, with
no cluster at all. Blocks are read from the repository on demand (shared lock held
while mounted; none on a read-only repository, with a warning). The command stays in
the foreground; Ctrl-C unmounts.

FUSE binding: `mfusepy`, the maintained fork of fusepy (ctypes over libfuse 2 or 3, no
compiler needed, pure-Python wheel). It is an optional extra (`pip install
'hcbak[mount]'`) because it needs the system's libfuse; docs/restore.md says why it
was chosen over pyfuse3 (needs trio + compiled libfuse3 headers) and llfuse.
"""

import errno
import json
import os
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from hcbak.cli.common import load_config
from hcbak.cli.output import info, warn
from hcbak.errors import HcbakError, UsageError

if TYPE_CHECKING:
    from hcbak.engine.restore import DiskReader
    from hcbak.repo import Point


app = typer.Typer(add_completion=False)  # one command, built by the root app on use


@app.command("mount")
def mount_command(
    point_spec: Annotated[
        str,
        typer.Argument(
            metavar="POINT", help="Point id, unique id prefix, VM@latest or VM@YYYY-MM-DD."
        ),
    ],
    mountpoint: Annotated[
        Path, typer.Argument(metavar="MOUNTPOINT", help="An empty directory to mount on.")
    ],
    repo: Annotated[
        str | None,
        typer.Option("--repo", help="Repository name (default: search all configured ones)."),
    ] = None,
) -> None:
    """Mount a restore point read-only: one directory per disk, with disk.raw.

    The command stays in the foreground; Ctrl-C unmounts.
    """
    fuse = _import_fuse()
    if not mountpoint.is_dir():
        raise UsageError(f"mount point {mountpoint} is not a directory")
    if any(mountpoint.iterdir()):  # FUSE refuses it, after we said "mounted"
        raise UsageError(f"mount point {mountpoint} is not empty")
    if not os.path.exists("/dev/fuse"):
        raise UsageError("/dev/fuse is missing", hint="load the fuse module or run with FUSE")
    from hcbak.cli.repo_access import opened_point

    config = load_config()
    with opened_point(config, point_spec, repo) as (repository, point):
        operations = _make_operations(fuse, point, disk_readers(repository, point))
        info(f"mounted point {point.id[:12]} ({point.vm_name}) on {mountpoint}; Ctrl-C unmounts")
        try:
            fuse.FUSE(operations, str(mountpoint), foreground=True, ro=True, nothreads=False)
        except RuntimeError as exc:
            if not _ended_by_signal(exc, mountpoint):
                raise
    info(f"unmounted {mountpoint}")


# fuse_main's "event loop failed" code. libfuse 3.x records the signal that ended the
# loop (SIGINT, SIGTERM, SIGHUP) as the loop's result, and fuse_main turns any nonzero
# result into 8: a normal Ctrl-C then looks like a failure (libfuse 3.14 seen here).
_FUSE_LOOP_ENDED = 8


def _ended_by_signal(exc: RuntimeError, mountpoint: Path) -> bool:
    """A loop that ended with code 8 and left nothing mounted was unmounted as asked."""
    return exc.args[:1] == (_FUSE_LOOP_ENDED,) and not os.path.ismount(mountpoint)


def disk_readers(repository: Any, point: "Point") -> "dict[str, DiskReader]":
    """Directory name -> reader, one per disk of the point."""
    from hcbak.engine.restore import DiskReader

    out: dict[str, DiskReader] = {}
    for disk in point.disks:
        name = f"disk{disk.slot}" if disk.slot >= 0 else disk.type.lower()
        if name in out:
            name = f"{name}-{disk.uuid[:8]}"
        out[name] = DiskReader(repository, disk)
    return out


def _import_fuse() -> Any:
    try:
        import mfusepy
    except (ImportError, OSError) as exc:  # OSError: libfuse itself is missing
        raise UsageError(
            f"hcbak mount needs FUSE support ({exc})",
            hint="pip install 'hcbak[mount]' and install libfuse (fuse3 or fuse package)",
        )
    return mfusepy


def _make_operations(fuse: Any, point: "Point", readers: "dict[str, DiskReader]") -> Any:
    """A read-only FUSE filesystem over the point's disks."""
    meta = (
        json.dumps(
            {
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
            },
            indent=2,
        ).encode()
        + b"\n"
    )
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

    class PointFS(fuse.Operations):
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
                    warn(f"{path} at {offset}: {exc.one_line()}")
                    raise fuse.FuseOSError(errno.EIO)
            raise fuse.FuseOSError(errno.ENOENT)

    return PointFS()
