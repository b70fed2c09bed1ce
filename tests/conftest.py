"""Fixtures shared by every test package.

Tests run the real `hcbak` program through tests/harness.py, the one harness:
`run_hcbak` starts it as a subprocess and `run_inproc` calls its entry point in this
process, both with an isolated config and state directory, so nothing touches the
developer's own files.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from harness import WEAKEN_KDF, RunHcbak, isolated_env, run_in_process, run_subprocess

os.environ[WEAKEN_KDF] = "1"


@pytest.fixture
def hcbak_env(tmp_path: Path) -> dict[str, str]:
    """Environment for a subprocess: its own config path and state dir under tmp_path."""
    return isolated_env(tmp_path)


@pytest.fixture
def run_hcbak(hcbak_env: dict[str, str]) -> RunHcbak:
    """Run `hcbak ARGS...` as a real subprocess; returns the CompletedProcess (text)."""

    def run(
        *args: str,
        input: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 120,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        merged = {**hcbak_env, **(env or {})}
        return run_subprocess(list(args), merged, input=input, timeout=timeout, check=check)

    return run


@pytest.fixture
def run_inproc(hcbak_env: dict[str, str]) -> RunHcbak:
    """`hcbak ARGS...` in this process (harness.run_in_process), with the same
    environment as `run_hcbak`: the same entry point as the console script, without
    the interpreter start, for the long tables of bad input."""

    def call(
        *args: str, env: dict[str, str] | None = None, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        return run_in_process(list(args), {**hcbak_env, **(env or {})}, check=check)

    return call


@pytest.fixture
def scrypt_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The thread names of every key derivation (scrypt or Argon2id) the repository
    code runs from now on (the early-derivation slots start empty)."""
    from hcbak.repo import kdf

    calls: list[str] = []
    real = kdf._stretch

    def counting(passphrase: object, params: kdf.KdfParams) -> bytes:
        calls.append(threading.current_thread().name)
        return real(passphrase, params)  # type: ignore[arg-type]

    monkeypatch.setattr(kdf, "_stretch", counting)
    monkeypatch.setattr(kdf, "_early", {})
    return calls


# --- a real S3 endpoint: one Ceph RADOS Gateway per test session ------------------------
# ../shared/s3/ceph-rgw.sh (relative to the project root, where CI has it) starts a
# single-node Ceph with radosgw on a free loopback port, installing Debian's packages the
# first time (~23 s, needs root). It starts only when a test asks for `s3_bucket`; when
# it cannot start, every such test is SKIPPED with the reason (`-ra` prints it), never
# passed. pytest-xdist workers share one gateway: the first starts it under a file lock,
# the last one out stops it.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
CEPH_RGW_SCRIPT_ENV = "HCBAK_TEST_CEPH_RGW"  # another place for ceph-rgw.sh
# A gateway somebody else started (.ci/run starts it while the venv installs): the tests
# use it (`start` on a running cluster only prints its exports) and leave it running.
CEPH_RGW_DIR_ENV = "HCBAK_TEST_CEPH_RGW_DIR"


def ceph_rgw_script() -> Path | None:
    candidates = [
        os.environ.get(CEPH_RGW_SCRIPT_ENV, ""),
        PROJECT_ROOT.parent / "shared/s3/ceph-rgw.sh",
        PROJECT_ROOT.parent.parent / "shared/s3/ceph-rgw.sh",  # a git worktree under wt/
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def _parse_exports(text: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("export ") and "=" in line:
            key, value = line.removeprefix("export ").split("=", 1)
            env[key] = value.strip("'\"")
    return env


@pytest.fixture(scope="session")
def ceph_rgw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The AWS_* / S3_ENDPOINT_URL exports of this session's gateway (or a skip)."""
    import fcntl
    import json

    try:
        import boto3  # noqa: F401
    except ImportError:
        pytest.skip("S3 tests need boto3 (pip install -e '.[dev]')")
    script = ceph_rgw_script()
    if script is None:
        pytest.skip(
            f"S3 tests need ../shared/s3/ceph-rgw.sh by the project (or ${CEPH_RGW_SCRIPT_ENV})"
        )
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the same folder for every worker of this run
    gateway_dir = shared / "ceph-rgw"
    owned = not os.environ.get(CEPH_RGW_DIR_ENV)
    if not owned:
        gateway_dir = Path(os.environ[CEPH_RGW_DIR_ENV])
    state = shared / "ceph-rgw.users"

    @contextmanager
    def locked() -> Iterator[None]:
        with open(shared / "ceph-rgw.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def users(delta: int) -> int:
        count = json.loads(state.read_text()) if state.exists() else 0
        count += delta
        state.write_text(json.dumps(count))
        return int(count)

    with locked():
        proc = subprocess.run(
            ["bash", str(script), "start", str(gateway_dir)],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        env = _parse_exports(proc.stdout)
        if proc.returncode != 0 or "S3_ENDPOINT_URL" not in env:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            pytest.skip(f"Ceph RGW could not start ({script} exited {proc.returncode}): {tail}")
        users(+1)
    try:
        yield env
    finally:
        with locked():
            if users(-1) <= 0 and owned:
                subprocess.run(
                    ["bash", str(script), "stop", str(gateway_dir)],
                    capture_output=True,
                    timeout=120,
                    check=False,
                )


@pytest.fixture
def s3_bucket(ceph_rgw: dict[str, str], request: pytest.FixtureRequest) -> Iterator[S3Bucket]:
    """A new, empty bucket on the session's gateway, removed (with its objects) after."""
    import re
    import uuid

    import boto3

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    name = f"{name}-{uuid.uuid4().hex[:8]}"
    client = boto3.client(
        "s3",
        endpoint_url=ceph_rgw["S3_ENDPOINT_URL"],
        aws_access_key_id=ceph_rgw["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=ceph_rgw["AWS_SECRET_ACCESS_KEY"],
        region_name=ceph_rgw["AWS_DEFAULT_REGION"],
    )
    client.create_bucket(Bucket=name)
    bucket = S3Bucket(name=name, env=dict(ceph_rgw), client=client)
    try:
        yield bucket
    finally:
        empty_bucket(client, name)


class S3Bucket:
    """A test's bucket: its name, the gateway's exports (for subprocess env) and a
    boto3 client with the gateway's keys (to look at or damage objects directly)."""

    def __init__(self, name: str, env: dict[str, str], client: object) -> None:
        self.name = name
        self.env = env
        self.client: Any = client
        self.endpoint = env["S3_ENDPOINT_URL"]

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.name, Prefix=prefix
        )
        return [o["Key"] for page in pages for o in page.get("Contents", [])]


def empty_bucket(client: Any, name: str) -> None:
    """Delete every version, marker and unfinished upload, then the bucket (best effort:
    an Object Lock retention may keep some; the gateway is thrown away anyway)."""
    try:
        pages = client.get_paginator("list_object_versions").paginate(Bucket=name)
        for page in pages:
            for item in page.get("Versions", []) + page.get("DeleteMarkers", []):
                try:
                    client.delete_object(Bucket=name, Key=item["Key"], VersionId=item["VersionId"])
                except Exception:
                    pass
        for upload in client.list_multipart_uploads(Bucket=name).get("Uploads", []):
            client.abort_multipart_upload(
                Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"]
            )
        client.delete_bucket(Bucket=name)
    except Exception:
        pass
