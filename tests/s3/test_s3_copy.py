"""`repo copy` through a real S3 repository on Ceph, and restore/mount straight from it.

local -> S3 -> local restores every point bit-exact, and a second copy in either
direction sends nothing (0 blocks, 0 bytes, no new object in the bucket). `restore
disk` and `mount` read the S3 repository directly (issue 20's acceptance items).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from engine.copy_driver import PASS, PASS2, fill_source
from harness import HCBAK, RunHcbak, assert_no_traceback

KEYS_VAR = "S3_TEST_KEYS"


def _env(bucket: Any) -> dict[str, str]:
    keys = f"{bucket.env['AWS_ACCESS_KEY_ID']}:{bucket.env['AWS_SECRET_ACCESS_KEY']}"
    return {"SRC_PASS": PASS.reveal(), "DST_PASS": PASS2.reveal(), KEYS_VAR: keys}


def _add_s3(run: RunHcbak, bucket: Any, env: dict[str, str]) -> None:
    run("repo", "add", "offsite", "--s3", f"{bucket.name}/hcbak", "--endpoint", bucket.endpoint,
        "--region", "us-east-1", "--credentials-env", KEYS_VAR, "--encrypt", "--compression",
        "zstd", "--passphrase-env", "DST_PASS", env=env, check=True)  # fmt: skip


def _copy(run: RunHcbak, src: str, dst: str, env: dict[str, str]) -> dict[str, Any]:
    proc = run("repo", "copy", src, dst, "--json", env=env)
    assert_no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def test_copy_local_to_s3_to_local_is_bit_exact_and_a_second_copy_sends_nothing(
    run_hcbak: RunHcbak, run_inproc: RunHcbak, tmp_path: Path, s3_bucket: Any
) -> None:
    env = _env(s3_bucket)
    src, back = tmp_path / "src", tmp_path / "back"
    run_inproc("repo", "add", "src", "--path", str(src), "--encrypt", "--block-size", "256KiB",
               "--passphrase-env", "SRC_PASS", env=env, check=True)  # fmt: skip
    # `back` is a new repository: same passphrase as SRC, but keys of its own
    run_inproc("repo", "add", "back", "--path", str(back), "--encrypt", "--passphrase-env",
               "SRC_PASS", env=env, check=True)  # fmt: skip
    _add_s3(run_inproc, s3_bucket, env)
    expected = fill_source(src)

    up = _copy(run_hcbak, "src", "offsite", env)
    assert [p["status"] for p in up["points"]] == ["copied"] * 4
    assert up["totals"]["blocks_sent"] > 0
    objects = sorted(s3_bucket.keys("hcbak/"))
    assert len(s3_bucket.keys("hcbak/points/")) == 4
    again = _copy(run_hcbak, "src", "offsite", env)
    assert {p["status"] for p in again["points"]} == {"present"}
    assert (again["totals"]["blocks_sent"], again["totals"]["bytes_sent"]) == (0, 0)
    assert sorted(s3_bucket.keys("hcbak/")) == objects  # not one object written

    down = _copy(run_hcbak, "offsite", "back", env)
    assert [p["status"] for p in down["points"]] == ["copied"] * 4
    for pid, data in expected.items():
        out = tmp_path / f"{pid}.raw"
        run_inproc("restore", "disk", pid, "--disk", "0", "--to", str(out), "--repo", "back",
                   env=env, check=True)  # fmt: skip
        assert out.read_bytes() == data
    packs = sorted(p.name for p in (back / "packs").rglob("*") if p.is_file())
    again = _copy(run_hcbak, "offsite", "back", env)
    assert {p["status"] for p in again["points"]} == {"present"}
    assert (again["totals"]["blocks_sent"], again["totals"]["bytes_sent"]) == (0, 0)
    assert sorted(p.name for p in (back / "packs").rglob("*") if p.is_file()) == packs

    # restore straight from the bucket, as a real subprocess
    pid, data = next(iter(expected.items()))
    out = tmp_path / "direct.raw"
    proc = run_hcbak("restore", "disk", pid, "--disk", "0", "--to", str(out), "--repo",
                     "offsite", env=env)  # fmt: skip
    assert_no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == data


def _fuse_unavailable() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is absent (no FUSE in this environment)"
    if not any(os.path.exists(f"/usr/bin/{b}") for b in ("fusermount", "fusermount3")):
        return "fusermount is not installed (fuse/fuse3 package)"
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"mfusepy/libfuse unavailable: {exc}"
    return None


@pytest.mark.skipif(_fuse_unavailable() is not None, reason=str(_fuse_unavailable()))
def test_mount_reads_a_point_straight_from_s3(
    run_inproc: RunHcbak, hcbak_env: dict[str, str], tmp_path: Path, s3_bucket: Any
) -> None:
    env = _env(s3_bucket)
    src = tmp_path / "src"
    run_inproc("repo", "add", "src", "--path", str(src), "--encrypt", "--block-size", "256KiB",
               "--passphrase-env", "SRC_PASS", env=env, check=True)  # fmt: skip
    _add_s3(run_inproc, s3_bucket, env)
    expected = fill_source(src)
    run_inproc("repo", "copy", "src", "offsite", env=env, check=True)
    pid, data = next(iter(expected.items()))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.Popen([*HCBAK, "mount", pid, str(mnt), "--repo", "offsite"],
                            env={**hcbak_env, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    try:
        raw = mnt / "disk0" / "disk.raw"
        deadline = time.monotonic() + 20
        while not raw.exists():
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the mount did not appear"
            time.sleep(0.05)
        assert raw.read_bytes() == data
        assert json.loads((mnt / "point.json").read_text())["id"] == pid
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        assert not os.path.ismount(mnt)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if os.path.ismount(mnt):
            subprocess.run(["fusermount", "-u", "-z", str(mnt)], check=False)
