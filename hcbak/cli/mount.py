"""`hcbak mount POINT MOUNTPOINT`: a read-only FUSE view of a restore point.

One directory per disk holding `disk.raw`, plus `point.json` (the filesystem itself is
engine/mount.py). An operator can then `losetup -r -P` a disk.raw, `mount -o ro` a
partition and copy single files out, with no cluster at all. Blocks are read from the
repository on demand (shared lock held while mounted; none on a read-only repository,
with a warning). The command stays in the foreground; Ctrl-C unmounts.
"""

import os
from pathlib import Path
from typing import Annotated

import typer

from hcbak.cli.common import load_config
from hcbak.cli.output import info, warn
from hcbak.errors import UsageError

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
    from hcbak.engine.mount import disk_readers, import_fuse, point_filesystem

    fuse = import_fuse()
    if not mountpoint.is_dir():
        raise UsageError(f"mount point {mountpoint} is not a directory")
    if any(mountpoint.iterdir()):  # FUSE refuses it, after we said "mounted"
        raise UsageError(f"mount point {mountpoint} is not empty")
    if not os.path.exists("/dev/fuse"):
        raise UsageError("/dev/fuse is missing", hint="load the fuse module or run with FUSE")
    from hcbak.cli.repo_access import opened_point

    config = load_config()
    with opened_point(config, point_spec, repo) as (repository, point):
        operations = point_filesystem(fuse, point, disk_readers(repository, point), warn)
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
