"""Reading a stored disk of a point: its blocks in order, or as a qcow2 image.

Every point is a synthetic full (a complete block map per disk), so a restore reads one
point only. Blocks are fetched through `Repository.get_block` (read, decrypt, decompress,
verify) by a small thread pool with a bounded in-order window: the heavy parts release
the GIL, and memory stays at `window * block_size` whatever the disk size. Both
restores read through here: to a file (restore_disk.py) and to a VM (restore_vm.py).
"""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from hcbak.errors import TransportError
from hcbak.transport.qcow2 import Qcow2Layout, choose_cluster_size, plan_qcow2, stream_qcow2

if TYPE_CHECKING:
    from hcbak.repo import DiskImage, Repository

FETCH_WORKERS = 4
FETCH_WINDOW = 8  # blocks in flight per disk: bounds memory to ~8 MiB at 1 MiB blocks

# (disk label, bytes done, bytes total); called from the restoring thread only.
Progress = Callable[[str, int, int], None]


def no_progress(label: str, done: int, total: int) -> None:
    return None


def qcow2_stream(
    repo: Repository, disk: DiskImage, progress: Progress | None = None
) -> tuple[Qcow2Layout, Iterator[bytes]]:
    """The qcow2 image of a disk: its layout (exact `total_size`) and its chunks.

    The cluster size follows the block size (transport.qcow2.choose_cluster_size), so a
    block is one cluster, or splits into whole 2 MiB clusters for blocks above 2 MiB.
    """
    block_size = disk.block_size
    cluster_size = choose_cluster_size(block_size)
    if block_size % cluster_size:
        raise TransportError(
            f"qcow2 needs a power-of-two block size of at least 64 KiB, got {block_size}"
        )
    per_block = block_size // cluster_size
    guest_clusters = -(-disk.capacity // cluster_size)
    stored = stored_blocks(disk)
    clusters = array("q")
    for index in stored:
        first = index * per_block
        clusters.extend(range(first, min(first + per_block, guest_clusters)))
    layout = plan_qcow2(disk.capacity, clusters, cluster_size)
    report = progress or no_progress

    def data() -> Iterator[bytes]:
        for index, block in fetch_blocks(repo, disk, stored):
            if per_block == 1:
                yield block  # the common case: no copy
            else:
                view = memoryview(block)
                for part in range(per_block):
                    if index * per_block + part < guest_clusters:
                        yield bytes(view[part * cluster_size : (part + 1) * cluster_size])
            report(disk_label(disk), min(disk.capacity, (index + 1) * block_size), disk.capacity)
        report(disk_label(disk), disk.capacity, disk.capacity)

    return layout, stream_qcow2(layout, data())


def fetch_blocks(
    repo: Repository,
    disk: DiskImage,
    indexes: Iterable[int],
    workers: int = FETCH_WORKERS,
    window: int = FETCH_WINDOW,
) -> Iterator[tuple[int, bytes]]:
    """(index, plaintext) for each block index, in order, fetched in parallel.

    At most `window` blocks are in flight or buffered. Zero blocks are not fetched: they
    come back as one shared zero buffer (identity-comparable via `zero_block`).
    """
    from hcbak.repo import ZERO_BLOCK

    zero = zero_block(disk.block_size)
    pending: deque[tuple[int, Future[bytes] | None]] = deque()
    source = iter(indexes)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hcbak-restore")

    def submit_next() -> None:
        for index in source:
            block_id = disk.block_map.get(index)
            if block_id == ZERO_BLOCK:
                pending.append((index, None))
                continue
            pending.append((index, pool.submit(repo.get_block, block_id)))
            return

    try:
        for _ in range(window):
            submit_next()
        while pending:
            index, future = pending.popleft()
            data = zero if future is None else future.result()
            submit_next()
            yield index, data
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def clip(data: bytes, room: int) -> bytes | memoryview:
    """The part of a block inside the disk (the last block may pass its end); no copy."""
    return data if len(data) <= room else memoryview(data)[:room]


_ZEROS: dict[int, bytes] = {}


def zero_block(size: int) -> bytes:
    if size not in _ZEROS:
        _ZEROS[size] = bytes(size)
    return _ZEROS[size]


def stored_blocks(disk: DiskImage) -> array[int]:
    """Indexes of the blocks that hold data (not ZERO_BLOCK), ascending (a walk over
    the map's held chunks, not over every block of the disk)."""
    return array("q", (i for i, _id in disk.block_map.stored()))


def disk_label(disk: DiskImage) -> str:
    return f"slot {disk.slot} {disk.type}"
