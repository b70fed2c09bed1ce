"""Object Lock on Ceph: `points forget` and `repo prune` on an immutable repository say
what they could not free because it is locked (a line, and --json fields), never fail
halfway, and a prune after the retention has ended really frees it (no version, no
delete marker left).

Waiting out `immutable_days` is not possible in a test: the repository uses GOVERNANCE
mode, and the test itself (not hcbak) shortens the retention of the locked versions to
a few seconds with the governance bypass, as an administrator could.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from engine.helpers import MiB
from reliability.helpers import cli

from .test_s3_object_lock import immutable_lab, locked_bucket  # noqa: F401 (fixture)

DATA = ("hcbak/packs/", "hcbak/index/", "hcbak/points/")


def all_versions(bucket: Any) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(key -> version ids, key -> delete marker ids) under the data prefixes."""
    versions: dict[str, list[str]] = {}
    markers: dict[str, list[str]] = {}
    for prefix in DATA:
        answer = bucket.client.list_object_versions(Bucket=bucket.name, Prefix=prefix)
        for v in answer.get("Versions", []):
            versions.setdefault(v["Key"], []).append(v["VersionId"])
        for m in answer.get("DeleteMarkers", []):
            markers.setdefault(m["Key"], []).append(m["VersionId"])
    return versions, markers


def test_prune_reports_locked_objects_and_frees_them_after_expiry(
    tmp_path: Path,
    locked_bucket: Any,  # noqa: F811
) -> None:
    with immutable_lab(tmp_path, locked_bucket, "governance") as L:
        vm = L.sim.create_vm("web01", [2 * MiB], tags=["nightly"])
        L.sim.fill(L.sim.disk_uuids(vm)[0], seed=51)
        assert cli(L.env, "job", "run", "nightly").code == 0
        written = sorted(k for p in DATA for k in locked_bucket.keys(p))
        assert any("/packs/" in k for k in written) and any("/points/" in k for k in written)
        point = locked_bucket.keys("hcbak/points/")[0].rsplit("/", 1)[1]
        forgot = cli(L.env, "points", "forget", point, "--repo", "vault")
        forgot.assert_clean()
        assert forgot.code == 0, forgot.err
        assert "1 deleted objects stay locked by Object Lock until" in forgot.err, forgot.err
        retention = cli(L.env, "repo", "forget", "vault", "--json")  # nothing to forget
        assert retention.code == 0, retention.err
        assert json.loads(retention.out)["locked_objects"] == 1  # the hidden manifest
        pruned = cli(L.env, "repo", "prune", "vault", "--json")
        pruned.assert_clean()
        assert pruned.code == 0, pruned.err  # locked objects never make it fail
        report = json.loads(pruned.out)
        assert report["locked_objects"] == len(written), (report, written)
        until = datetime.fromisoformat(report["locked_until"])
        assert until > datetime.now(UTC) + timedelta(days=2)
        assert "stay locked by Object Lock until" in pruned.err
        visible = [k for p in DATA for k in locked_bucket.keys(p)]
        assert not set(visible) & set(written)  # hidden (prune wrote a new, empty index)
        versions, _ = all_versions(locked_bucket)
        assert set(written) <= set(versions)  # but every locked version is still there
        versions = {k: v for k, v in versions.items() if k in written}
        # The retention ends (the test shortens it, GOVERNANCE bypass): prune frees all.
        soon = datetime.now(UTC) + timedelta(seconds=2)
        for key, ids in versions.items():
            for vid in ids:
                locked_bucket.client.put_object_retention(
                    Bucket=locked_bucket.name, Key=key, VersionId=vid,
                    Retention={"Mode": "GOVERNANCE", "RetainUntilDate": soon},
                    BypassGovernanceRetention=True)  # fmt: skip
        time.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 1.5)
        again = cli(L.env, "repo", "prune", "vault", "--json")
        again.assert_clean()
        assert again.code == 0, again.err
        freed = json.loads(again.out)
        assert freed["locked_objects"] == 0 and freed["locked_until"] is None, freed
        assert freed["versions_freed"] >= len(written), freed
        assert "stay locked" not in again.err
        versions, markers = all_versions(locked_bucket)
        assert not (set(versions) | set(markers)) & set(written)  # no version, no marker
        verify = cli(L.env, "repo", "verify", "vault", "--read-data")
        assert verify.code == 0, verify.err
        assert cli(L.env, "job", "run", "nightly").code == 0  # and the repository goes on
