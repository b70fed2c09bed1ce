"""The S3 gateway itself dies mid-backup and comes back: a private Ceph RGW for this
test (its own ceph-mon, ceph-osd and radosgw in their own folder), whose radosgw
process is SIGKILLed while a pack upload is on the wire, then started again.

Only radosgw is restarted, with the command line it had (read from /proc before the
kill), on the same ceph.conf and so the same port: `ceph-rgw.sh start DIR` on a DIR
whose radosgw is dead would clean the DIR and start an empty cluster, and the
objects live in the OSD, which keeps running. The restarted radosgw is this test's
own process and is stopped by its PID; `ceph-rgw.sh stop DIR` stops the rest.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import S3Bucket, _parse_exports, ceph_rgw_script, empty_bucket
from engine.helpers import MiB, wait_for
from reliability.helpers import cli, spawn

from .s3_faults import FaultProxy
from .test_s3_repo import PACK_UPLOAD, live_sha, restored_sha, s3_lab, verify_clean


class PrivateGateway:
    """One throw-away Ceph cluster of ceph-rgw.sh whose radosgw can be killed and
    restarted without losing the objects."""

    def __init__(self, script: Path, folder: Path, env: dict[str, str]) -> None:
        self.script, self.dir, self.env = script, folder, env
        self.restarted: subprocess.Popen[bytes] | None = None

    def rgw_pid(self) -> int:
        for line in (self.dir / "pids").read_text().splitlines():
            name, pid, *_ = line.split()
            if name == "rgw":
                return int(pid)
        raise AssertionError("no radosgw in DIR/pids")

    def kill_rgw(self) -> list[str]:
        """SIGKILL the running radosgw; returns its command line."""
        proc = self.restarted
        pid = proc.pid if proc is not None else self.rgw_pid()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        assert Path(argv[0].decode()).name == "radosgw", argv
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not _alive(pid), timeout=10)
        return [a.decode() for a in argv]

    def start_rgw(self, argv: list[str]) -> None:
        """radosgw again, as before (same ceph.conf, port and cluster); until S3 answers."""
        out = open(self.dir / "log" / "rgw-restarted.out", "ab")  # noqa: SIM115
        self.restarted = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
        )
        out.close()
        wait_for(lambda: self.answers(), timeout=60)

    def answers(self) -> bool:
        assert self.restarted is None or self.restarted.poll() is None, "radosgw died"
        try:
            urllib.request.urlopen(self.env["S3_ENDPOINT_URL"], timeout=2)
        except urllib.error.HTTPError:
            return True  # an S3 error answer is an answer
        except OSError:
            return False
        return True

    def stop(self) -> None:
        if self.restarted is not None and self.restarted.poll() is None:
            self.restarted.kill()  # ours, by its PID
            self.restarted.wait()
        subprocess.run(["bash", str(self.script), "stop", str(self.dir)],
                       capture_output=True, timeout=120, check=False)  # fmt: skip


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def private_gateway(ceph_rgw: dict[str, str]) -> Iterator[PrivateGateway]:
    """A gateway of this test's own (after the session's one proved Ceph can start)."""
    script = ceph_rgw_script()
    assert script is not None  # ceph_rgw skips otherwise
    folder = Path(tempfile.mkdtemp(prefix="hcbak-rgw-"))  # short: Ceph's sockets live here
    folder.rmdir()  # the script makes it (and refuses a folder it did not create)
    proc = subprocess.run(["bash", str(script), "start", str(folder)],
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    gateway = PrivateGateway(script, folder, _parse_exports(proc.stdout))
    try:
        if proc.returncode != 0 or "S3_ENDPOINT_URL" not in gateway.env:
            pytest.fail(f"a private gateway did not start: {proc.stderr[-500:]}")
        yield gateway
    finally:
        gateway.stop()


@pytest.mark.slow  # ~30 s: make test-slow (CI)
def test_gateway_killed_mid_upload_then_restarted(
    tmp_path: Path, private_gateway: PrivateGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    import boto3

    env = private_gateway.env
    client = boto3.client("s3", endpoint_url=env["S3_ENDPOINT_URL"],
                          aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                          region_name="us-east-1")  # fmt: skip
    bucket = S3Bucket("restart", env, client)
    client.create_bucket(Bucket=bucket.name)
    proxy = FaultProxy(bucket.endpoint)  # to see (and hold) the pack upload
    try:
        with s3_lab(tmp_path, bucket, endpoint=proxy.url) as L:
            vm = L.sim.create_vm("web01", [10 * MiB], tags=["nightly"])
            disk = L.sim.disk_uuids(vm)[0]
            L.sim.fill(disk, seed=41, written=1.0, compressible=0.0)
            assert cli(L.env, "job", "run", "nightly").code == 0  # one committed point
            first = live_sha(L, disk, 10 * MiB)
            committed = bucket.keys("hcbak/points/")
            assert len(committed) == 1
            L.sim.fill(disk, seed=42, written=1.0, compressible=0.0)
            proxy.hold = PACK_UPLOAD  # 10 MiB of random data: a multipart pack upload
            child = spawn(L.env, "job", "run", "nightly")
            assert proxy.held.wait(60), "no pack upload started"
            assert child.poll() is None  # the run is alive, a pack on the wire
            argv = private_gateway.kill_rgw()
            assert not private_gateway.answers()  # the gateway is really gone
            proxy.release.set()
            started = time.monotonic()
            _, err = child.communicate(timeout=180)
            stderr = err.decode()
            assert child.returncode == 4, stderr  # exit 4: nothing could be done
            assert "Traceback" not in stderr and "internal error" not in stderr, stderr
            assert "unreachable" in stderr, stderr
            assert time.monotonic() - started < 120  # bounded retries, no hang
            private_gateway.start_rgw(argv)
            assert bucket.keys("hcbak/points/") == committed  # nothing half-committed
            verify_clean(L)
            again = cli(L.env, "job", "run", "nightly")
            again.assert_clean()
            assert again.code == 0, again.err
            points = bucket.keys("hcbak/points/")
            assert len(points) == 2
            old = committed[0].rsplit("/", 1)[1]
            assert restored_sha(L, old, disk) == first
            assert restored_sha(L, "web01@latest", disk) == live_sha(L, disk, 10 * MiB)
            pruned = cli(L.env, "repo", "prune", "s3main")  # ends the dead run's upload
            pruned.assert_clean()
            assert pruned.code == 0, pruned.err
            assert client.list_multipart_uploads(Bucket=bucket.name).get("Uploads") is None
            verify_clean(L)
    finally:
        proxy.close()
        empty_bucket(client, bucket.name)
