"""Repositories with points for the copy tests, and a copy process to kill.

Usage (a child process of tests/engine/test_copy.py):
  copy_driver.py SRC DST PHASE
      copy every point of SRC to DST (both encrypted with PASS) through the real
      engine, announcing "phase NAME" on stdout and sleeping at PHASE so the parent can
      check the phase's effect on disk and SIGKILL a process provably alive there:
      `blocks-sent` (the second point being copied has stored its first block, its
      manifest not written), `before-manifest` (the second point's blocks are flushed
      and checked, its manifest about to be written).
"""

from __future__ import annotations

import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "repo"))  # run as a script too
import repo_helpers

from hcbak.repo import Point, Repository, init_repo, open_repo
from hcbak.repo.settings import FORMAT_VERSION
from hcbak.secrets import Secret

BS = 256 * 1024
PASS = Secret("copy source passphrase")
PASS2 = Secret("another passphrase for the copy")
SMALL_PACKS = 512 * 1024  # several packs per point: kills land between durable packs
T0 = datetime(2026, 11, 1, 3, 0, tzinfo=UTC)


def make_repo(root: Path, passphrase: Secret | None = PASS, version: int = FORMAT_VERSION) -> Path:
    init_repo(root, passphrase=passphrase, block_size=BS, version=version)
    return root


def disk_bytes(seed: int, n_blocks: int) -> bytes:
    """Random, compressible and zero blocks, and repeats of the same block."""
    rnd = random.Random(seed)
    out = bytearray()
    for _ in range(n_blocks):
        kind = rnd.randrange(4)
        if kind == 0:
            out += rnd.randbytes(BS)
        elif kind == 1:
            out += (f"line {rnd.randrange(1000)} of a log\n".encode() * BS)[:BS]
        elif kind == 2:
            out += bytes(BS)
        else:
            out += bytes([rnd.randrange(256)]) * BS
    return bytes(out)


def changed(data: bytes, seed: int, n: int = 2) -> bytes:
    """The disk after a day: n random blocks rewritten (an incremental's worth)."""
    rnd = random.Random(seed)
    out = bytearray(data)
    for _ in range(n):
        i = rnd.randrange(len(data) // BS)
        out[i * BS : (i + 1) * BS] = rnd.randbytes(BS)
    return bytes(out)


def write_point(
    repo: Repository, data: bytes, *, vm: str, job: str = "nightly", day: int = 0
) -> Point:
    """A point of VM `vm` on day `day` (its own disk and snapshot uuids)."""
    return repo_helpers.write_point(
        repo,
        data,
        vm=vm,
        job=job,
        created=T0 + timedelta(days=day),
        snapshot_uuid=f"snap-{vm}-{day}",
        disk_uuid=f"disk-{vm}",
        serial=3,
    )


def fill_source(root: Path, passphrase: Secret | None = PASS) -> dict[str, bytes]:
    """Three points of vm web (a full, then two incrementals), one of db (job
    `weekly`); returns point id -> disk bytes."""
    out: dict[str, bytes] = {}
    web = disk_bytes(1, 24)
    with open_repo(root, passphrase=passphrase) as repo:
        for day in range(3):
            out[write_point(repo, web, vm="web", day=day).id] = web
            web = changed(web, day)
        db = disk_bytes(2, 12)
        out[write_point(repo, db, vm="db", job="weekly", day=1).id] = db
    return out


def read_disk(repo: Repository, point_id: str) -> bytes:
    img = repo.load_point(point_id).disks[0]
    zero = bytes(img.block_size)
    parts = [
        zero if bid == bytes(16) else repo.get_block(bid)
        for bid in (img.block_map.get(i) for i in range(len(img.block_map)))
    ]
    return b"".join(parts)[: img.capacity]


def announce(phase: str, stop_at: str) -> None:
    print(f"phase {phase}", flush=True)
    if phase == stop_at:
        time.sleep(600)  # the parent kills us here


def stop_copy_at(dst: Any, stop_at: str) -> None:
    """Wrap the DST repository's put_block and save_point (instance attributes) to
    announce the phases of the second point copied."""
    real_put, real_save = dst.put_block, dst.save_point
    saves = 0
    stored_in_second = 0

    def put_block(block_id: bytes, data: bytes) -> int:
        nonlocal stored_in_second
        added = int(real_put(block_id, data))
        if saves == 1 and added:
            stored_in_second += 1
            if stored_in_second == 1:
                announce("blocks-sent", stop_at)
        return added

    def save_point(point: Point) -> None:
        nonlocal saves
        if saves == 1:
            announce("before-manifest", stop_at)
        real_save(point)
        saves += 1
        print(f"committed {point.id}", flush=True)

    dst.put_block, dst.save_point = put_block, save_point


def main() -> int:
    from hcbak.engine.copy import CopySelection, copy_points

    src_root, dst_root, phase = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    with (
        open_repo(src_root, passphrase=PASS) as src,
        open_repo(dst_root, passphrase=PASS2, pack_target=SMALL_PACKS) as dst,
    ):
        stop_copy_at(dst, phase)
        print("ready", flush=True)
        report = copy_points(src, dst, CopySelection())
    return int(report.exit_code())


if __name__ == "__main__":
    sys.exit(main())
