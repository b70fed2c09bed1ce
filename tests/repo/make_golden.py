"""Regenerate a golden repository (only when deliberately creating a new golden).

    python tests/repo/make_golden.py tests/data/golden-v2 2

tests/data/golden-v1 is format v1 as first released, golden-v2 format v2 as first
released (with the real Argon2id parameters: do not set HCBAK_TESTONLY_WEAKEN_KDF);
every later hcbak must still open them and restore these exact bytes
(tests/repo/test_golden.py). Do not regenerate one to make a failing test pass: that
would hide a format break.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

from hcbak.repo import BlockMap, DiskImage, Point, init_repo, open_repo
from hcbak.repo.kdf import WEAKEN_ENV
from hcbak.secrets import Secret


def passphrase(version: int) -> Secret:
    return Secret(f"golden-v{version} passphrase")


BS = 256 * 1024


def golden_disk(variant: int) -> bytes:
    """Four blocks: text, a zero block, a repeated byte, text shared across variants."""
    text = b"".join(f"golden block {variant} line {i}\n".encode() for i in range(12000))[:BS]
    shared = b"".join(f"shared line {i}\n".encode() for i in range(20000))[:BS]
    return text + bytes(BS) + bytes([0x40 + variant]) * BS + shared


def main(dest: Path, version: int) -> None:
    if os.environ.get(WEAKEN_ENV):
        raise SystemExit(f"unset {WEAKEN_ENV}: a golden repository has the real KDF")
    shutil.rmtree(dest, ignore_errors=True)
    secret = passphrase(version)
    init_repo(dest, passphrase=secret, compression="zstd", block_size=BS, version=version)
    with open_repo(dest, passphrase=secret, lock=None) as repo:
        for variant, vm in ((1, "web"), (2, "db")):
            data = golden_disk(variant)
            bm = BlockMap(len(data) // BS)
            for i in range(len(bm)):
                block = data[i * BS : (i + 1) * BS]
                if block.count(0) != BS:
                    bid = repo.block_id(block)
                    repo.put_block(bid, block)
                    bm.set(i, bid)
            repo.save_point(
                Point(
                    id=repo.new_point_id(),
                    job="nightly",
                    cluster="golden",
                    vm_uuid=f"uuid-{vm}",
                    vm_name=vm,
                    created=datetime(2026, 11, 27, variant, 0, tzinfo=UTC),
                    vm={"name": vm, "mem": 1 << 30, "numVCPU": 2},
                    snapshot_uuid=f"snap-{vm}",
                    snapshot_label="hcbak-golden",
                    disks=[DiskImage("disk-" + vm, 0, "VIRTIO_DISK", len(data), BS, bm, 3)],
                    stats={"bytes_read": len(data)},
                    hcbak_version="0.1.0",
                )
            )
            print(vm, hashlib.sha256(data).hexdigest())


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 2)
