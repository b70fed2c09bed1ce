"""Building restore points for restore tests straight through the repository API.

A point made here is what a backup would store for a disk read from a file: the same
block ids, the same zero-block rule. It keeps restore tests independent of the backup
engine; the end-to-end tests against the simulator use the real backup path.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hcbak.repo import BlockMap, DiskImage, Point, Repository

MiB = 1 << 20


@dataclass
class SourceDisk:
    path: Path
    uuid: str
    slot: int
    type: str = "VIRTIO_DISK"


def write_source(path: Path, capacity: int, seed: int, every: int = 4) -> Path:
    """A sparse raw file: 64 KiB of distinct data in every `every`-th 1 MiB stripe,
    plus data in the last bytes so the tail (not block aligned) matters."""
    with open(path, "wb") as f:
        f.truncate(capacity)
        for n, offset in enumerate(range(0, capacity, MiB)):
            if n % every == 0:
                digest = hashlib.sha256(f"{seed}-{n}".encode()).digest()
                f.seek(offset + 4096)
                f.write((digest * 2048)[: min(65536, capacity - offset - 4096)])
        f.seek(capacity - 100)
        f.write(b"tail-" * 20)
    return path


def store_disk(repo: Repository, source: SourceDisk) -> DiskImage:
    block_size = repo.config.block_size
    capacity = os.path.getsize(source.path)
    n_blocks = -(-capacity // block_size)
    block_map = BlockMap(n_blocks)
    with open(source.path, "rb") as f:
        for i in range(n_blocks):
            data = f.read(block_size).ljust(block_size, b"\0")
            if data.count(0) == len(data):
                continue  # zero blocks are never stored
            block_id = repo.block_id(data)
            repo.put_block(block_id, data)
            block_map.set(i, block_id)
    return DiskImage(
        uuid=source.uuid,
        slot=source.slot,
        type=source.type,
        capacity=capacity,
        block_size=block_size,
        block_map=block_map,
    )


def make_point(
    repo: Repository,
    disks: list[SourceDisk],
    vm_name: str = "web01",
    vm: dict[str, Any] | None = None,
    created: datetime | None = None,
) -> Point:
    point = Point(
        id=repo.new_point_id(),
        job="test",
        cluster="lab",
        vm_uuid="vm-" + vm_name,
        vm_name=vm_name,
        created=created or datetime.now(UTC),
        vm=vm or {"name": vm_name},
        snapshot_uuid=None,
        snapshot_label=None,
        disks=[store_disk(repo, d) for d in disks],
        stats={},
        hcbak_version="test",
    )
    repo.save_point(point)
    return point
