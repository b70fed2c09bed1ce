"""Small helpers shared by the repository tests (real files, real repositories)."""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from hcbak.repo import BlockMap, DiskImage, Point, Repository, init_repo
from hcbak.repo.pack import read_trailer
from hcbak.repo.storage import LocalStore
from hcbak.secrets import Secret

BS = 256 * 1024
PASS = Secret("correct horse battery staple")
GOLDEN = Path(__file__).parent.parent / "data" / "golden-v1"
GOLDEN_PASS = "golden-v1 passphrase"


def make_repo(root: Path, *, encrypted: bool = True, compression: str = "lz4") -> Path:
    init_repo(
        root,
        passphrase=PASS if encrypted else None,
        compression=compression,
        block_size=BS,
    )  # a cheap Argon2id: tests/conftest.py sets HCBAK_TESTONLY_WEAKEN_KDF
    return root


def disk_bytes(seed: int, n_blocks: int, bs: int = BS) -> bytes:
    """Mixed content: random, compressible text, zero blocks, repeated blocks."""
    rnd = random.Random(seed)
    out = bytearray()
    for _ in range(n_blocks):
        kind = rnd.randrange(4)
        if kind == 0:
            out += rnd.randbytes(bs)
        elif kind == 1:
            out += (f"line {rnd.randrange(1000)} of a log file\n".encode() * bs)[:bs]
        elif kind == 2:
            out += bytes(bs)
        else:
            out += bytes([rnd.randrange(256)]) * bs
    return bytes(out)


def write_point(
    repo: Repository,
    data: bytes,
    *,
    vm: str = "vm1",
    job: str = "nightly",
    created: datetime | None = None,
    snapshot_uuid: str = "snap-1",
    disk_uuid: str = "disk-1",
    serial: int = 7,
) -> Point:
    """A point of one disk holding `data`, written through the repository's writers
    (blocks of the repository's size; all-zero ones left out, as a backup does)."""
    bs = repo.config.block_size
    n = (len(data) + bs - 1) // bs
    bm = BlockMap(n)
    for i in range(n):
        block = data[i * bs : (i + 1) * bs].ljust(bs, b"\0")
        if block.count(0) == bs:
            continue
        bid = repo.block_id(block)
        repo.put_block(bid, block)
        bm.set(i, bid)
    point = Point(
        id=repo.new_point_id(),
        job=job,
        cluster="c1",
        vm_uuid=f"uuid-{vm}",
        vm_name=vm,
        created=created or datetime.now(UTC),
        vm={"name": vm, "mem": 1 << 30},
        snapshot_uuid=snapshot_uuid,
        disks=[DiskImage(disk_uuid, 0, "VIRTIO_DISK", len(data), bs, bm, serial=serial)],
    )
    repo.save_point(point)
    return point


def read_disk(repo: Repository, point_id: str, disk: int = 0) -> bytes:
    img = repo.load_point(point_id).disks[disk]
    out = b"".join(repo.get_block(img.block_map.get(i)) for i in range(len(img.block_map)))
    return out[: img.capacity]


def adopt_golden(run_hcbak: Callable[..., object], tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A copy of the committed golden repository, added to the config as `g`; returns
    the copy and the environment that holds its passphrase."""
    copy = tmp_path / "golden"
    shutil.copytree(GOLDEN, copy)
    env = {"GOLDEN_PASS": GOLDEN_PASS}
    run_hcbak(
        "repo", "add", "g", "--path", str(copy), "--passphrase-env", "GOLDEN_PASS",
        env=env, check=True,
    )  # fmt: skip
    return copy, env


def pack_path(root: Path, pack_id: str) -> Path:
    """The file of a pack in a folder repository (tests damage files directly)."""
    return root / "packs" / pack_id[:2] / pack_id


def pack_table(path: Path) -> list[tuple[bytes, int, int, int]]:
    """The blob table of the pack file at `path` (id, offset, length, plain_len)."""
    return read_trailer(LocalStore(path.parents[2]), path.name)
