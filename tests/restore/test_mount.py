"""`hcbak mount`: a real FUSE mount of a point, read through the kernel, Ctrl-C unmounts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from harness import HCBAK

from hcbak.config import Config, RepoConfig, save_config
from hcbak.repo import init_repo, open_repo

from .helpers import MiB, SourceDisk, make_point, write_source


def _fuse_unavailable() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is absent (no FUSE in this environment)"
    if not (shutil.which("fusermount") or shutil.which("fusermount3")):
        return "fusermount is not installed (fuse/fuse3 package)"
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"mfusepy/libfuse unavailable: {exc}"
    return None


pytestmark = pytest.mark.skipif(_fuse_unavailable() is not None, reason=str(_fuse_unavailable()))


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"mount exited early: {proc.stderr.read().decode() if proc.stderr else ''}"
            )
        if path.exists():
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} did not appear")


def test_mounted_point_shows_each_disk_as_raw_file_and_ctrl_c_unmounts(
    tmp_path: Path, hcbak_env: dict[str, str]
) -> None:
    first = write_source(tmp_path / "d0.raw", 3 * MiB + 4096, seed=5)
    second = write_source(tmp_path / "d1.raw", 2 * MiB, seed=6)
    repo_path = tmp_path / "repo"
    init_repo(repo_path, compression="lz4", block_size=256 * 1024, passphrase=None)
    with open_repo(repo_path, lock="shared") as repo:
        point = make_point(
            repo, [SourceDisk(first, "disk-0000", 0), SourceDisk(second, "disk-1111", 1)]
        )
    config = Config(path=Path(hcbak_env["HCBAK_CONFIG"]))
    config.repositories["main"] = RepoConfig(name="main", path=str(repo_path))
    save_config(config)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.Popen(
        [*HCBAK, "mount", point.id, str(mnt)],
        env=hcbak_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for(mnt / "disk1" / "disk.raw", proc)
        assert sorted(os.listdir(mnt)) == ["disk0", "disk1", "point.json"]
        assert (mnt / "disk0" / "disk.raw").read_bytes() == first.read_bytes()
        assert (mnt / "disk1" / "disk.raw").read_bytes() == second.read_bytes()
        assert json.loads((mnt / "point.json").read_text())["id"] == point.id
        with pytest.raises(OSError):
            os.open(mnt / "disk0" / "disk.raw", os.O_RDWR)  # read-only mount
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        stderr = proc.stderr.read().decode() if proc.stderr else ""
        assert "Traceback" not in stderr and "unmounted" in stderr, stderr
        assert not os.path.ismount(mnt)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if os.path.ismount(mnt):
            subprocess.run(["fusermount", "-u", "-z", str(mnt)], check=False)


def test_mount_on_a_folder_that_is_not_empty_is_refused_before_mounting(
    tmp_path: Path, hcbak_env: dict[str, str]
) -> None:
    repo_path = tmp_path / "repo"
    init_repo(repo_path, compression="lz4", block_size=256 * 1024, passphrase=None)
    with open_repo(repo_path, lock="shared") as repo:
        point = make_point(repo, [SourceDisk(write_source(tmp_path / "d.raw", MiB, 7), "d", 0)])
    config = Config(path=Path(hcbak_env["HCBAK_CONFIG"]))
    config.repositories["main"] = RepoConfig(name="main", path=str(repo_path))
    save_config(config)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "someone's file").write_text("keep")
    proc = subprocess.run([*HCBAK, "mount", point.id, str(busy)],
                          env=hcbak_env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == f"error: mount point {busy} is not empty\n"
    assert sorted(os.listdir(busy)) == ["someone's file"]
