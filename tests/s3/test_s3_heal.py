"""A damaged copy heals on S3 too: the block stored again by an incremental must not
rebuild the damaged pack under its own name (RGW keeps the existing, damaged object
on a write-once commit, and the index skips the recorded (id, pack) copy)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from reliability.damage_driver import BS, full_backup, incremental_backup, restore

from hcbak.config.s3_target import S3Keys, S3Target
from hcbak.repo import init_repo, open_repo
from hcbak.repo.pack import pack_key
from hcbak.repo.storage.s3 import S3Options, S3Store
from hcbak.repo.verify import verify


def _store(bucket: Any, tmp_path: Path) -> S3Store:
    keys = S3Keys(bucket.env["AWS_ACCESS_KEY_ID"], bucket.env["AWS_SECRET_ACCESS_KEY"])
    options = S3Options(
        endpoint=bucket.endpoint, keys=keys, region="us-east-1", spool_dir=tmp_path / "spool"
    )
    return S3Store(S3Target(bucket.name, "repo"), options)


def test_a_healed_block_in_a_one_block_pack_restores_on_s3(tmp_path: Path, s3_bucket: Any) -> None:
    rnd = random.Random(11)
    store = _store(s3_bucket, tmp_path)
    init_repo(store, block_size=BS)
    t0 = datetime(2026, 12, 1, tzinfo=UTC)
    disk = [rnd.randbytes(BS) for _ in range(16)]
    with open_repo(store, pack_target=BS) as repo:  # one block per pack
        p1 = full_backup(repo, disk, t0, 1)
        x = p1.disks[0].block_map.get(4)
        loc = repo.locate(x)
        assert loc is not None
    key = f"repo/{pack_key(loc.pack)}"
    client, name = s3_bucket.client, s3_bucket.name
    data = bytearray(client.get_object(Bucket=name, Key=key)["Body"].read())
    data[loc.offset + 100] ^= 0xFF
    client.put_object(Bucket=name, Key=key, Body=bytes(data))
    with open_repo(store) as repo:
        assert verify(repo, read_data_percent=100).errors
    with open_repo(store, pack_target=BS) as repo:
        assert repo.set_aside_ids() == {x}
        p2 = incremental_backup(repo, p1, disk, set(), t0 + timedelta(hours=1))
    with open_repo(store) as repo:
        assert repo.set_aside_ids() == set()
        assert restore(repo, p2.id) == b"".join(disk)
