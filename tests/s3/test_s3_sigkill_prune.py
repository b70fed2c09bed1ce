"""`hcbak repo prune` on an S3 repository (the real Ceph RGW), SIGKILLed at each of its
steps: the folder scenario of tests/reliability/test_sigkill.py on a bucket.

The driver (tests/repo/crash_writer.py `cli PHASE`) runs the real `hcbak repo prune`
and stops at PHASE; the kill lands in a live process whose step is visible in the
bucket (the pack and index objects listed with boto3, compared with the listing before
the prune). Afterwards every point retention keeps restores bit-exact (through
`hcbak restore`, from the bucket), `repo verify --read-data` is clean, a backup runs
past the dead prune's lease, and the next prune completes.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from engine.helpers import BLOCK, MiB
from reliability.helpers import (
    PRUNE_PHASES,
    RepoFiles,
    cli,
    kill_at_prune_phase,
    start_prune_driver,
)

from hcbak.config import Retention, load_config, save_config

from .test_s3_repo import live_sha, restored_sha, s3_lab, verify_clean

SEED = 20261203
KEEP = 2


def bucket_files(bucket: Any) -> RepoFiles:
    """The pack and index segment names in the bucket now (what RepoFiles.of lists in
    a folder)."""

    def names(prefix: str) -> frozenset[str]:
        return frozenset(k.rsplit("/", 1)[1] for k in bucket.keys(f"hcbak/{prefix}/"))

    return RepoFiles(names("packs"), names("index"))


def point_ids(bucket: Any) -> list[str]:
    """The committed points: their manifests in the bucket (cheaper than `points list`,
    which opens the repository)."""
    return [k.rsplit("/", 1)[1] for k in bucket.keys("hcbak/points/")]


def check_points(
    L: Any, bucket: Any, disk: str, expected: dict[str, str], forgettable: set[str]
) -> int:
    """Every recorded point is there (unless retention may forget it) and restores to
    the bytes the guest held when it was taken. Returns how many were restored."""
    present = set(point_ids(bucket))
    checked = 0
    for pid, digest in expected.items():
        if pid not in present:
            assert pid in forgettable, f"committed point {pid} vanished"
            continue
        assert restored_sha(L, pid, disk) == digest, pid
        checked += 1
    return checked


@pytest.mark.slow  # ~20 s each: make test-slow (CI)
@pytest.mark.parametrize("phase", PRUNE_PHASES)
def test_sigkill_at_each_prune_phase_on_s3_keeps_every_retained_point(
    tmp_path: Path, s3_bucket: Any, phase: str
) -> None:
    rnd = random.Random(SEED)
    with s3_lab(tmp_path, s3_bucket) as L:
        config = load_config(L.config.path)
        config.jobs["nightly"].retention = Retention(keep_last=KEEP)
        save_config(config)
        # One pipeline thread: a run's blocks go into one pack in order, so retention
        # leaves packs partly live (repacked) and wholly dead (deleted).
        L.env["HCBAK_READ_THREADS"] = "1"
        vm = L.sim.create_vm("db01", [4 * MiB], tags=["nightly"])
        disk = L.sim.disk_uuids(vm)[0]
        expected: dict[str, str] = {}
        order: list[str] = []

        def backup(blocks: int) -> None:
            L.sim.write(disk, 0, rnd.randbytes(blocks * BLOCK))
            live = live_sha(L, disk, 4 * MiB)
            res = cli(L.env, "job", "run", "nightly")
            res.assert_clean()
            assert res.code == 0, res.err
            new = [p for p in point_ids(s3_bucket) if p not in expected]
            assert len(new) == 1, new
            expected[new[0]] = live
            order.append(new[0])

        for blocks in (16, 10, 7, 7):  # as in the folder test: repacks and dead packs
            backup(blocks)
        forgettable = set(order[:-KEEP])
        before = bucket_files(s3_bucket)
        proc = start_prune_driver("cli", phase, "repo", "prune", "s3main", env=L.env)
        kill_at_prune_phase(proc, phase, lambda: bucket_files(s3_bucket), before)
        assert s3_bucket.keys("hcbak/locks/") != []  # the dead prune's lease is left
        assert check_points(L, s3_bucket, disk, expected, forgettable) >= KEEP
        verify_clean(L)
        backup(0)  # past the dead prune's exclusive lease (its holder is provably dead)
        done = cli(L.env, "repo", "prune", "s3main")
        done.assert_clean()
        assert done.code == 0, done.err
        assert check_points(L, s3_bucket, disk, expected, set(order[:-KEEP])) == KEEP
        verify_clean(L)
        assert s3_bucket.keys("hcbak/locks/") == []
        assert s3_bucket.client.list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads") is None


@pytest.fixture(autouse=True)
def _no_aws_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The repository must get its keys from its own reference, not the test's env."""
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    yield
