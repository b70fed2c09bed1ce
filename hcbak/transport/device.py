"""Find the block device a hot-added clone became on the worker.

HyperCore attaches a VIRTIO disk whose serial is the first 20 characters of the new
block device uuid (virtio serials are limited to 20 bytes), so udev links it as
`<root>/disk/by-id/virtio-<uuid[:20]>`. The link can take a moment to appear after
the clone task completes. When it never does (non-udev systems, other bus types), we
fall back to a block device that appeared since `before` and has the clone's size.
`device_root` is configurable so the same code reads the simulator's device folder.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from hcbak.errors import TransportError

BY_ID_PREFIX = "virtio-"
SERIAL_LEN = 20


def by_id_path(device_root: Path, disk_uuid: str) -> Path:
    return Path(device_root) / "disk" / "by-id" / f"{BY_ID_PREFIX}{disk_uuid[:SERIAL_LEN]}"


def list_devices(device_root: Path) -> set[str]:
    """Names of top-level device nodes/files under the root (for the size fallback)."""
    try:
        return {e.name for e in os.scandir(device_root) if not e.is_dir(follow_symlinks=False)}
    except OSError:
        return set()


def device_size(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def locate_device(
    device_root: str | Path,
    disk_uuid: str,
    capacity: int,
    *,
    before: set[str] | None = None,
    timeout: float = 10.0,
    poll: float = 0.05,
) -> Path:
    """The path to read the clone `disk_uuid` from; TransportError when not found."""
    root = Path(device_root)
    link = by_id_path(root, disk_uuid)
    deadline = time.monotonic() + timeout
    while True:
        if link.exists():
            return link
        if before is not None:
            found = _new_device_of_size(root, before, capacity)
            if found is not None:
                return found
        if time.monotonic() >= deadline:
            break
        time.sleep(poll)
    raise TransportError(
        f"clone {disk_uuid} did not appear under {root} (looked for {link}"
        + (f" and a new device of {capacity} bytes)" if before is not None else ")"),
        hint="check the cluster's device_root and that hcbak runs on the worker VM",
    )


def _new_device_of_size(root: Path, before: set[str], capacity: int) -> Path | None:
    for name in sorted(list_devices(root) - before):
        path = root / name
        try:
            if device_size(path) == capacity:
                return path
        except OSError:
            continue
    return None
