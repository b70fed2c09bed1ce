"""`immutable_days` on Ceph: Object Lock retention on every object a backup writes,
extended (never shortened) on the packs a new point shares with older ones, refused
on a bucket without Object Lock, shown by `points list`.

The promise is checked with boto3 directly and the repository's own keys: a locked
version cannot be deleted (COMPLIANCE: not even with the governance bypass), and a
plain delete or overwrite only adds a version, the locked one stays readable.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from engine.helpers import Lab, MiB, lab
from reliability.helpers import cli

from hcbak.config import load_config, save_config

KEYS_VAR = "S3_TEST_KEYS"


@pytest.fixture
def locked_bucket(s3_bucket: Any) -> Iterator[Any]:
    """A second bucket of the test, created with Object Lock enabled."""
    from conftest import S3Bucket, empty_bucket

    name = f"locked-{uuid.uuid4().hex[:12]}"
    s3_bucket.client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    yield S3Bucket(name, s3_bucket.env, s3_bucket.client)
    empty_bucket(s3_bucket.client, name)  # best effort: locked versions stay


@contextmanager
def immutable_lab(tmp_path: Path, bucket: Any, mode: str) -> Iterator[Lab]:
    with lab(tmp_path) as L:
        L.env[KEYS_VAR] = f"{bucket.env['AWS_ACCESS_KEY_ID']}:{bucket.env['AWS_SECRET_ACCESS_KEY']}"
        added = cli(L.env, "repo", "add", "vault", "--s3", f"{bucket.name}/hcbak",
                    "--endpoint", bucket.endpoint, "--credentials-env", KEYS_VAR,
                    "--block-size", "256KiB", "--immutable-days", "2",
                    "--immutable-mode", mode)  # fmt: skip
        added.assert_clean()
        assert added.code == 0, added.err
        config = load_config(L.config.path)
        config.jobs["nightly"].repo = "vault"
        save_config(config)
        yield L


def versions(bucket: Any, key: str) -> list[dict[str, Any]]:
    answer = bucket.client.list_object_versions(Bucket=bucket.name, Prefix=key)
    return [v for v in answer.get("Versions", []) if v["Key"] == key]


def test_a_bucket_without_object_lock_is_refused(run_hcbak: Any, s3_bucket: Any) -> None:
    keys = f"{s3_bucket.env['AWS_ACCESS_KEY_ID']}:{s3_bucket.env['AWS_SECRET_ACCESS_KEY']}"
    proc = run_hcbak("repo", "add", "v", "--s3", s3_bucket.name, "--endpoint", s3_bucket.endpoint,
                     "--credentials-env", "K", "--immutable-days", "7",
                     env={"K": keys})  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "does not have Object Lock enabled" in proc.stderr
    assert s3_bucket.keys() == []  # nothing written


def test_compliance_locked_objects_cannot_be_deleted_with_the_same_keys(
    tmp_path: Path, locked_bucket: Any
) -> None:
    with immutable_lab(tmp_path, locked_bucket, "compliance") as L:
        vm = L.sim.create_vm("web01", [2 * MiB], tags=["nightly"])
        L.sim.fill(L.sim.disk_uuids(vm)[0], seed=21)
        run = cli(L.env, "job", "run", "nightly")
        assert run.code == 0, run.err
        client, name = locked_bucket.client, locked_bucket.name
        keys = locked_bucket.keys("hcbak/")
        data_keys = [k for k in keys if not k.startswith("hcbak/locks/")]
        assert any("/packs/" in k for k in data_keys) and any("/points/" in k for k in data_keys)
        floor = datetime.now(UTC) + timedelta(days=2)
        for key in data_keys:
            head = client.head_object(Bucket=name, Key=key)
            assert head["ObjectLockMode"] == "COMPLIANCE", key
            assert head["ObjectLockRetainUntilDate"] >= floor, key
        pack = next(k for k in data_keys if "/packs/" in k)
        version = versions(locked_bucket, pack)[0]["VersionId"]
        original = client.get_object(Bucket=name, Key=pack)["Body"].read()
        for bypass in (False, True):
            with pytest.raises(ClientError) as refused:
                client.delete_object(Bucket=name, Key=pack, VersionId=version,
                                     BypassGovernanceRetention=bypass)  # fmt: skip
            assert refused.value.response["Error"]["Code"] == "AccessDenied"
        shorter = {"Mode": "COMPLIANCE", "RetainUntilDate": datetime.now(UTC) + timedelta(hours=1)}
        with pytest.raises(ClientError):  # nor shortened
            client.put_object_retention(Bucket=name, Key=pack, VersionId=version, Retention=shorter)
        client.put_object(Bucket=name, Key=pack, Body=b"ransom note")  # a new version only
        client.delete_object(Bucket=name, Key=pack)  # a delete marker only
        kept = client.get_object(Bucket=name, Key=pack, VersionId=version)["Body"].read()
        assert kept == original
        listed = cli(L.env, "points", "list", "--repo", "vault", "--json")
        assert listed.code == 0, listed.err
        assert '"immutable_until": "' in listed.out
        table = cli(L.env, "points", "list", "--repo", "vault")
        assert "IMMUTABLE UNTIL" in table.out
        damaged = cli(L.env, "repo", "verify", "vault")
        assert damaged.code == 6  # the attack shows: the pack looks missing
        # recovery: remove the marker and the attacker's version (neither is locked)
        for item in client.list_object_versions(Bucket=name, Prefix=pack).get("DeleteMarkers", []):
            client.delete_object(Bucket=name, Key=pack, VersionId=item["VersionId"])
        current = versions(locked_bucket, pack)[0]
        assert current["IsLatest"] and current["VersionId"] != version
        client.delete_object(Bucket=name, Key=pack, VersionId=current["VersionId"])
        assert client.get_object(Bucket=name, Key=pack)["Body"].read() == original
        repaired = cli(L.env, "repo", "verify", "vault", "--read-data")
        assert repaired.code == 0, repaired.err
        # forget + prune through hcbak: the deletes become delete markers, they do not
        # fail halfway, and every locked version is still there
        point = locked_bucket.keys("hcbak/points/")[0].rsplit("/", 1)[1]
        assert cli(L.env, "points", "forget", point, "--repo", "vault").code == 0
        pruned = cli(L.env, "repo", "prune", "vault")
        pruned.assert_clean()
        assert pruned.code == 0, pruned.err
        assert locked_bucket.keys("hcbak/points/") == []
        for key in data_keys:
            assert versions(locked_bucket, key), key  # the locked versions are kept


def test_a_new_point_extends_the_retention_of_the_packs_it_shares(
    tmp_path: Path, locked_bucket: Any
) -> None:
    with immutable_lab(tmp_path, locked_bucket, "governance") as L:
        vm = L.sim.create_vm("web01", [2 * MiB], tags=["nightly"])
        L.sim.fill(L.sim.disk_uuids(vm)[0], seed=22)
        assert cli(L.env, "job", "run", "nightly").code == 0
        client, name = locked_bucket.client, locked_bucket.name
        packs = locked_bucket.keys("hcbak/packs/")
        soon = datetime.now(UTC) + timedelta(hours=1)
        for pack in packs:  # as if the first point were old: its packs expire soon
            client.put_object_retention(Bucket=name, Key=pack, BypassGovernanceRetention=True,
                                        Retention={"Mode": "GOVERNANCE",
                                                   "RetainUntilDate": soon})  # fmt: skip
        weak = cli(L.env, "repo", "verify", "vault")
        weak.assert_clean()
        assert weak.code == 1, weak.err  # whole, but less protected than promised
        assert "less protected than promised" in weak.err
        assert packs[0].removeprefix("hcbak/") in weak.err
        assert cli(L.env, "job", "run", "nightly").code == 0  # unchanged disk: same packs
        assert locked_bucket.keys("hcbak/packs/") == packs
        floor = datetime.now(UTC) + timedelta(days=2)
        for pack in packs:
            head = client.head_object(Bucket=name, Key=pack)
            assert head["ObjectLockMode"] == "GOVERNANCE"
            assert head["ObjectLockRetainUntilDate"] >= floor, pack  # extended
        config_head = client.head_object(Bucket=name, Key="hcbak/config")
        assert config_head["ObjectLockRetainUntilDate"] >= floor  # the key material too
        healed = cli(L.env, "repo", "verify", "vault")
        assert healed.code == 0, healed.err  # the first point's packs are covered again
        first = versions(locked_bucket, packs[0])[0]["VersionId"]
        with pytest.raises(ClientError):  # governance: refused without the bypass
            client.delete_object(Bucket=name, Key=packs[0], VersionId=first)
