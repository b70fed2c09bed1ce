"""An S3 repository end to end, on the real Ceph RGW and the real simulator.

`repo add --s3`, `job run`, `restore disk` bit-exact and `verify --read-data`; then the
faults: the endpoint vanishing mid-upload, SIGKILL mid-upload, and two backups into
one bucket at once. Uploads are caught in the middle by a TCP proxy in front of the
gateway (s3_faults.FaultProxy) that holds the first pack upload open until released,
so every fault is known to land while a pack is on the wire.
"""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from engine.helpers import Lab, MiB, lab, wait_for
from reliability.helpers import cli, spawn

from hcbak.config import RepoConfig, S3RepoConfig, load_config, save_config

from .s3_faults import FaultProxy

KEYS_VAR = "S3_TEST_KEYS"  # the credentials reference of the test repository
PACK_UPLOAD = ("PUT ", "/packs/")  # the request line of a pack's PutObject or UploadPart


@contextmanager
def s3_lab(tmp_path: Path, bucket: Any, *, endpoint: str | None = None) -> Iterator[Lab]:
    """The engine tests' lab with job `nightly` backing up into `s3main` (an S3
    repository added by `hcbak repo add --s3`, keys from an environment variable)."""
    with lab(tmp_path) as L:
        L.env[KEYS_VAR] = f"{bucket.env['AWS_ACCESS_KEY_ID']}:{bucket.env['AWS_SECRET_ACCESS_KEY']}"
        added = cli(L.env, "repo", "add", "s3main", "--s3", f"{bucket.name}/hcbak",
                    "--endpoint", endpoint or bucket.endpoint, "--region", "us-east-1",
                    "--credentials-env", KEYS_VAR, "--block-size", "256KiB")  # fmt: skip
        added.assert_clean()
        assert added.code == 0, added.err
        config = load_config(L.config.path)
        config.jobs["nightly"].repo = "s3main"
        save_config(config)
        L.config = config
        yield L


def restored_sha(L: Lab, point: str, disk: str) -> str:
    out = L.tmp / f"restored-{time.monotonic_ns()}.raw"
    res = cli(L.env, "restore", "disk", point, "--disk", disk, "--to", str(out),
              "--repo", "s3main")  # fmt: skip
    res.assert_clean()
    assert res.code == 0, res.err
    return hashlib.sha256(out.read_bytes()).hexdigest()


def live_sha(L: Lab, disk: str, size: int) -> str:
    return hashlib.sha256(L.sim.read_live(disk, 0, size)).hexdigest()


def verify_clean(L: Lab) -> None:
    res = cli(L.env, "repo", "verify", "s3main", "--read-data")
    res.assert_clean()
    assert res.code == 0, res.err + res.out


def points_in_bucket(bucket: Any) -> list[str]:
    return bucket.keys("hcbak/points/")


def test_s3_repository_backup_restore_verify(tmp_path: Path, s3_bucket: Any) -> None:
    with s3_lab(tmp_path, s3_bucket) as L:
        vm = L.sim.create_vm("web01", [6 * MiB], tags=["nightly"])
        disk = L.sim.disk_uuids(vm)[0]
        L.sim.fill(disk, seed=3)
        config_text = Path(L.config.path).read_text()
        assert s3_bucket.env["AWS_SECRET_ACCESS_KEY"] not in config_text  # a reference only
        assert f"credentials_env: {KEYS_VAR}" in config_text
        run = cli(L.env, "job", "run", "nightly")
        run.assert_clean()
        assert run.code == 0, run.err
        keys = s3_bucket.keys("hcbak/")
        assert "hcbak/config" in keys
        assert any(k.startswith("hcbak/packs/") for k in keys)
        assert len(points_in_bucket(s3_bucket)) == 1
        assert s3_bucket.keys("hcbak/locks/") == []  # released
        assert restored_sha(L, "web01@latest", disk) == live_sha(L, disk, 6 * MiB)
        L.sim.write(disk, 2 * MiB, b"\x5a" * MiB)  # an incremental stores the change
        assert cli(L.env, "job", "run", "nightly").code == 0
        assert len(points_in_bucket(s3_bucket)) == 2
        assert restored_sha(L, "web01@latest", disk) == live_sha(L, disk, 6 * MiB)
        verify_clean(L)
        shown = cli(L.env, "repo", "show", "s3main", "--json")
        assert shown.code == 0, shown.err
        assert f"s3://{s3_bucket.name}/hcbak" in shown.out


def test_losing_the_endpoint_mid_upload_fails_cleanly_and_commits_nothing(
    tmp_path: Path, s3_bucket: Any
) -> None:
    proxy = FaultProxy(s3_bucket.endpoint)
    try:
        with s3_lab(tmp_path, s3_bucket, endpoint=proxy.url) as L:
            vm = L.sim.create_vm("web01", [6 * MiB], tags=["nightly"])
            disk = L.sim.disk_uuids(vm)[0]
            L.sim.fill(disk, seed=5)
            proxy.hold = PACK_UPLOAD
            child = spawn(L.env, "job", "run", "nightly")
            assert proxy.held.wait(60), "no pack upload started"
            assert child.poll() is None  # the run is alive, its pack on the wire
            proxy.go_down()  # every connection cut, every new one reset
            proxy.release.set()
            _, err = child.communicate(timeout=120)
            stderr = err.decode()
            assert child.returncode == 4, stderr  # nothing could be done: exit 4
            assert "Traceback" not in stderr
            assert "is unreachable: cannot write s3://" in stderr, stderr
            assert points_in_bucket(s3_bucket) == []  # no point without its packs
            proxy.down = False  # the endpoint is back: the next run is clean
            again = cli(L.env, "job", "run", "nightly")
            again.assert_clean()
            assert again.code == 0, again.err
            assert len(points_in_bucket(s3_bucket)) == 1
            assert restored_sha(L, "web01@latest", disk) == live_sha(L, disk, 6 * MiB)
            verify_clean(L)
    finally:
        proxy.close()


def test_a_pack_upload_that_fails_for_good_fails_its_vm_and_commits_no_point(
    tmp_path: Path, s3_bucket: Any
) -> None:
    """The endpoint drops one pack upload and refuses its retries, while every other
    request still works: the point that needs the pack must not be written."""
    proxy = FaultProxy(s3_bucket.endpoint)
    try:
        with s3_lab(tmp_path, s3_bucket, endpoint=proxy.url) as L:
            vm = L.sim.create_vm("web01", [2 * MiB], tags=["nightly"])
            disk = L.sim.disk_uuids(vm)[0]
            L.sim.fill(disk, seed=6)
            proxy.reject = PACK_UPLOAD  # every attempt of every pack upload: 503
            run = cli(L.env, "job", "run", "nightly")
            run.assert_clean()
            assert run.code == 4, run.err
            assert "SlowDown" in run.err, run.err  # the upload's last answer
            assert proxy.failed >= 5  # the first attempt and four retries
            assert proxy.requests_matching("PUT /" + s3_bucket.name + "/hcbak/locks/")
            assert points_in_bucket(s3_bucket) == []
            assert s3_bucket.keys("hcbak/locks/") == []  # the run itself ended cleanly
            verify_clean(L)
            proxy.reject = ()
            assert cli(L.env, "job", "run", "nightly").code == 0
            assert restored_sha(L, "web01@latest", disk) == live_sha(L, disk, 2 * MiB)
    finally:
        proxy.close()


@pytest.mark.slow  # ~16 s: make test-slow (CI)
def test_sigkill_mid_upload_leaves_the_bucket_consistent(tmp_path: Path, s3_bucket: Any) -> None:
    proxy = FaultProxy(s3_bucket.endpoint)
    try:
        with s3_lab(tmp_path, s3_bucket, endpoint=proxy.url) as L:
            # 20 MiB of random data: a pack above SINGLE_PUT_MAX, uploaded in parts
            vm = L.sim.create_vm("web01", [20 * MiB], tags=["nightly"])
            disk = L.sim.disk_uuids(vm)[0]
            L.sim.fill(disk, seed=9, written=1.0, compressible=0.0)
            assert cli(L.env, "job", "run", "nightly").code == 0  # one committed point
            first = restored_sha(L, "web01@latest", disk)
            L.sim.fill(disk, seed=10, written=1.0, compressible=0.0)
            proxy.hold = (*PACK_UPLOAD, "partNumber=")
            child = spawn(L.env, "job", "run", "nightly")
            assert proxy.held.wait(60), "no part upload started"
            assert child.poll() is None  # killed with a part on the wire
            child.send_signal(signal.SIGKILL)
            child.wait()
            proxy.release.set()
            client, name = s3_bucket.client, s3_bucket.name
            assert client.list_multipart_uploads(Bucket=name).get("Uploads")  # unfinished
            assert len(points_in_bucket(s3_bucket)) == 1  # the killed run committed nothing
            assert s3_bucket.keys("hcbak/locks/") != []  # its lease is left behind
            verify_clean(L)  # readers pass a dead run's lease
            again = cli(L.env, "job", "run", "nightly")
            again.assert_clean()
            assert again.code == 0, again.err
            assert restored_sha(L, "web01@latest", disk) == live_sha(L, disk, 20 * MiB)
            assert len(points_in_bucket(s3_bucket)) == 2
            pruned = cli(L.env, "repo", "prune", "s3main")  # ends the dead writer's upload
            assert pruned.code == 0, pruned.err
            assert client.list_multipart_uploads(Bucket=name).get("Uploads") is None
            verify_clean(L)
            assert restored_sha(L, "web01@latest", disk) != first
    finally:
        proxy.close()


def test_two_backups_into_one_bucket_at_once(tmp_path: Path, s3_bucket: Any) -> None:
    proxy = FaultProxy(s3_bucket.endpoint)
    try:
        with s3_lab(tmp_path, s3_bucket, endpoint=proxy.url) as L:
            vm1 = L.sim.create_vm("web01", [6 * MiB], tags=["nightly"])
            vm2 = L.sim.create_vm("db01", [6 * MiB], tags=["other"])
            d1, d2 = L.sim.disk_uuids(vm1)[0], L.sim.disk_uuids(vm2)[0]
            L.sim.fill(d1, seed=11)
            L.sim.fill(d2, seed=12)
            config = load_config(L.config.path)
            other = config.jobs["nightly"]
            config.jobs["other"] = type(other)(name="other", cluster="lab", repo="s3main",
                                               tags=["other"])  # fmt: skip
            save_config(config)
            proxy.hold = PACK_UPLOAD
            # two "hosts": each run keeps its own state dir (lease sightings, journals)
            env2 = {**L.env, "HCBAK_STATE_DIR": str(tmp_path / "state-host2")}
            first = spawn(L.env, "job", "run", "nightly")
            assert proxy.held.wait(60), "no pack upload started"
            second = spawn(env2, "job", "run", "other")
            wait_for(lambda: len(s3_bucket.keys("hcbak/locks/")) == 2, timeout=60)
            assert first.poll() is None  # both hold a lease at the same moment
            busy = cli(L.env, "repo", "prune", "s3main")
            assert busy.code == 5, busy.err  # prune waits for them (exclusive lease)
            proxy.release.set()
            for child in (first, second):
                _, err = child.communicate(timeout=120)
                assert child.returncode == 0, err.decode()
            assert len(points_in_bucket(s3_bucket)) == 2
            assert s3_bucket.keys("hcbak/locks/") == []
            assert restored_sha(L, "web01@latest", d1) == live_sha(L, d1, 6 * MiB)
            assert restored_sha(L, "db01@latest", d2) == live_sha(L, d2, 6 * MiB)
            verify_clean(L)
    finally:
        proxy.close()


def test_a_corrupted_object_is_named_by_verify_and_never_restored(
    tmp_path: Path, s3_bucket: Any
) -> None:
    with s3_lab(tmp_path, s3_bucket) as L:
        vm = L.sim.create_vm("web01", [2 * MiB], tags=["nightly"])
        disk = L.sim.disk_uuids(vm)[0]
        L.sim.fill(disk, seed=31, written=1.0, compressible=0.0)
        assert cli(L.env, "job", "run", "nightly").code == 0
        client, name = s3_bucket.client, s3_bucket.name
        for pack in s3_bucket.keys("hcbak/packs/"):  # one flipped byte in every pack
            data = bytearray(client.get_object(Bucket=name, Key=pack)["Body"].read())
            data[100] ^= 0xFF  # inside the first blob frame (after the 16-byte header)
            client.put_object(Bucket=name, Key=pack, Body=bytes(data))
        verify = cli(L.env, "repo", "verify", "s3main", "--read-data")
        verify.assert_clean()
        assert verify.code == 6, verify.err
        assert pack.rsplit("/", 1)[1][:12] in verify.err + verify.out
        out = L.tmp / "restored.raw"
        restore = cli(L.env, "restore", "disk", "web01@latest", "--disk", disk,
                      "--to", str(out), "--repo", "s3main")  # fmt: skip
        restore.assert_clean()
        assert restore.code == 6, restore.err  # damage, never wrong bytes
        assert not out.exists() or out.read_bytes() != L.sim.read_live(disk, 0, 2 * MiB)
        assert cli(L.env, "job", "run", "nightly").code == 0  # stores the blocks again
        assert restored_sha(L, "web01@latest", disk) == live_sha(L, disk, 2 * MiB)
        verify_clean(L)


def test_a_local_run_never_imports_boto3(tmp_path: Path, hcbak_env: dict[str, str]) -> None:
    """boto3 costs ~0.3 s of start-up: only an S3 repository may import it, and a
    config that merely names one does not (`job list`, `repo list`)."""
    script = tmp_path / "probe.py"
    script.write_text(
        "import sys\nfrom hcbak.cli.main import run\nrun(sys.argv[1:])\n"
        "print('boto3 imported' if 'boto3' in sys.modules else 'no boto3', file=sys.stderr)\n"
    )

    def imports(*argv: str) -> str:
        proc = subprocess.run([sys.executable, str(script), *argv], capture_output=True,
                              text=True, env=hcbak_env, timeout=60)  # fmt: skip
        return proc.stderr.strip().splitlines()[-1]

    assert imports("repo", "add", "local", "--path", str(tmp_path / "r")) == "no boto3"
    assert imports("repo", "show", "local") == "no boto3"
    config = load_config(Path(hcbak_env["HCBAK_CONFIG"]))
    s3 = S3RepoConfig(bucket="some-bucket", endpoint="http://127.0.0.1:9")
    config.repositories["remote"] = RepoConfig("remote", s3.location, s3=s3)
    save_config(config)
    assert imports("job", "list") == "no boto3"
    assert imports("repo", "list") == "no boto3"
    assert imports("repo", "show", "remote") == "boto3 imported"  # the probe can see it


@pytest.fixture(autouse=True)
def _no_aws_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The repository must get its keys from its own reference, not the test's env."""
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
