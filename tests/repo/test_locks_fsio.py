"""Lease locks, the atomic-write helper and its errno allowlist, on real files."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from repo_helpers import PASS, make_repo

from hcbak.errors import LockedError, NoSpaceError, RepoError
from hcbak.repo import fsio, open_repo
from hcbak.repo.locks import EXCLUSIVE, SHARED, RepoLock, holder_identity, read_locks, unlock


def fake_lock(
    root: Path, name: str, *, age: float, pid: int, host: str | None = None, kind: str = EXCLUSIVE
) -> None:
    now = time.time()
    doc = {
        "host": host or socket.gethostname(),
        "pid": pid,
        "kind": kind,
        "start": now - age,
        "refreshed": now - age,
        "command": "hcbak job run",
    }
    (root / "locks" / name).write_text(json.dumps(doc))


def dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def test_shared_locks_coexist_and_exclusive_waits_for_them(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "r")
    a, b = RepoLock(root, SHARED), RepoLock(root, SHARED)
    a.acquire()
    b.acquire()
    with pytest.raises(LockedError):
        RepoLock(root, EXCLUSIVE).acquire(wait=0.3)
    a.release()
    b.release()
    ex = RepoLock(root, EXCLUSIVE)
    ex.acquire()
    with pytest.raises(LockedError, match="exclusive lock"):
        RepoLock(root, SHARED).acquire()
    ex.release()
    assert read_locks(root) == []


def test_lock_is_refreshed_by_its_thread(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "r")
    lock = RepoLock(root, SHARED, refresh_interval=0.1)
    lock.acquire()
    first = read_locks(root)[0].refreshed
    time.sleep(0.5)
    assert read_locks(root)[0].refreshed > first
    lock.release()


def test_old_lock_of_a_dead_local_pid_is_stale_and_ignored(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "r")
    fake_lock(root, "old", age=3600, pid=dead_pid())
    with open_repo(root, passphrase=PASS, lock="exclusive"):
        pass
    assert [lk.name for lk in unlock(root)] == ["old"]


def test_old_lock_of_a_live_local_pid_is_not_stale(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "r")
    fake_lock(root, "alive", age=3600, pid=os.getpid())
    with pytest.raises(LockedError, match=f"pid {os.getpid()}"):
        with open_repo(root, passphrase=PASS, lock="shared"):
            pass
    assert unlock(root) == []
    assert [lk.name for lk in unlock(root, force=True)] == ["alive"]


def test_fresh_lock_of_a_dead_pid_is_not_stale_yet(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "r")
    fake_lock(root, "fresh", age=5, pid=dead_pid())
    with pytest.raises(LockedError):
        with open_repo(root, passphrase=PASS, lock="exclusive"):
            pass


def test_old_lock_from_another_host_is_stale(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "r")
    fake_lock(root, "remote", age=3600, pid=1, host="elsewhere.example")
    with open_repo(root, passphrase=PASS, lock="exclusive"):
        pass


def test_atomic_write_replaces_and_write_once_keeps(tmp_path: Path) -> None:
    target = tmp_path / "f"
    assert fsio.atomic_write(target, b"one")
    assert fsio.atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert not fsio.atomic_write(target, b"three", write_once=True)
    assert target.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


@pytest.mark.parametrize("code", [errno.EPERM, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS])
def test_dir_fsync_and_chmod_errors_of_network_filesystems_are_tolerated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(code, os.strerror(code))
        real_fsync(fd)

    def chmod(path: object, mode: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fsio, "_fsync", fsync)
    monkeypatch.setattr(fsio, "_chmod", chmod)
    fsio.atomic_write(tmp_path / "f", b"data")
    fsio.chmod_tolerant(tmp_path / "f", 0o600)
    assert (tmp_path / "f").read_bytes() == b"data"


def test_other_fsync_errors_are_not_tolerated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fsync(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(fsio, "_fsync", fsync)
    with pytest.raises(RepoError, match="I/O error"):
        fsio.atomic_write(tmp_path / "f", b"data")
    assert list(tmp_path.iterdir()) == []


def test_no_space_becomes_no_space_error_and_removes_the_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fsio, "_fsync", fsync)
    with pytest.raises(NoSpaceError, match="no space"):
        fsio.atomic_write(tmp_path / "f", b"data")
    assert list(tmp_path.iterdir()) == []


def fake_lock_with_identity(root: Path, name: str, **identity_changes: object) -> None:
    """A fresh lock whose holder identity is this process's, with some fields changed."""
    now = time.time()
    identity = {**holder_identity(), **identity_changes}
    doc = {
        "host": identity["host"],
        "pid": identity["pid"],
        "kind": EXCLUSIVE,
        "start": now,
        "refreshed": now,
        "command": "hcbak repo prune",
        "identity": identity,
    }
    (root / "locks" / name).write_text(json.dumps(doc))


def test_lock_of_a_killed_holder_on_this_host_is_stale_at_once(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "r")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from hcbak.repo.locks import RepoLock;"
            f"RepoLock(Path({str(root)!r}), 'exclusive').acquire(); print('held', flush=True);"
            "time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    with pytest.raises(LockedError):
        RepoLock(root, SHARED).acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with open_repo(root, passphrase=PASS, lock="exclusive"):
        pass


def test_fresh_lock_whose_pid_was_reused_is_stale(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "r")
    fake_lock_with_identity(root, "reused", pid_start="1")  # our pid, another start time
    with open_repo(root, passphrase=PASS, lock="exclusive"):
        pass


def test_fresh_lock_of_a_live_holder_with_identity_is_not_stale(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "r")
    fake_lock_with_identity(root, "live")
    with pytest.raises(LockedError):
        RepoLock(root, SHARED).acquire()


def test_fresh_lock_from_another_pid_namespace_is_not_stale(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "r")
    fake_lock_with_identity(root, "container", pid=dead_pid(), pid_ns="pid:[1]")
    with pytest.raises(LockedError):
        RepoLock(root, SHARED).acquire()


def test_fresh_lock_from_an_earlier_boot_of_this_host_is_stale(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "r")
    fake_lock_with_identity(root, "before-reboot", boot_id="00000000-dead-beef")
    with open_repo(root, passphrase=PASS, lock="exclusive"):
        pass


def test_holder_killed_while_creating_its_lock_leaves_no_lock(tmp_path: Path) -> None:
    """Killed between writing its lock and publishing it (here: at the link call), a
    holder must leave nothing that looks like a live lock; before the lock was written
    in place and a kill at the wrong moment left an empty file that blocked the
    repository for 30 minutes."""
    root = make_repo(tmp_path / "r")
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, signal, time; from pathlib import Path;"
            "from hcbak.repo.locks import RepoLock;"
            "os.link = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL);"
            f"RepoLock(Path({str(root)!r}), 'exclusive').acquire();"
            "print('acquired', flush=True); time.sleep(30)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr
    assert read_locks(root) == []
    with open_repo(root, passphrase=PASS, lock="exclusive"):
        pass


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o277], ids=["000", "022", "277"])
def test_files_and_folders_are_private_whatever_the_umask(tmp_path: Path, mask: int) -> None:
    """0600/0700 also under a umask that would give others access (000, 022) or take
    the owner's own write bit (277: the folder could not hold the repository)."""
    old = os.umask(mask)
    try:
        fsio.make_private_dir(tmp_path / "a" / "b", parents=True)
        fsio.make_private_dir(tmp_path / "a" / "b")  # exists: no error
        fsio.atomic_write(tmp_path / "a" / "b" / "f", b"data")
        os.close(fsio.open_private(tmp_path / "a" / "g", os.O_WRONLY))
    finally:
        os.umask(old)
    assert [_mode(tmp_path / p) for p in ("a", "a/b")] == [0o700, 0o700]
    assert [_mode(tmp_path / p) for p in ("a/b/f", "a/g")] == [0o600, 0o600]
    assert (tmp_path / "a" / "b" / "f").read_bytes() == b"data"


def test_a_folder_that_exists_keeps_its_mode(tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir(mode=0o755)
    os.chmod(tmp_path / "shared", 0o755)
    fsio.make_private_dir(tmp_path / "shared" / "repo", parents=True)
    assert (_mode(tmp_path / "shared"), _mode(tmp_path / "shared" / "repo")) == (0o755, 0o700)


@pytest.mark.parametrize("code", [errno.EPERM, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS])
def test_a_repository_is_made_where_chmod_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """CIFS and some NFS mounts refuse chmod with these errnos: the repository is
    still created and usable (with whatever modes the mount gives)."""

    def refuse(*args: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fsio, "_chmod", refuse)
    monkeypatch.setattr(fsio, "_fchmod", refuse)
    root = make_repo(tmp_path / "repo")
    with open_repo(root, passphrase=PASS) as repo:
        assert repo.list_points() == []


def test_other_chmod_errors_are_not_tolerated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args: object) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(fsio, "_fchmod", fail)
    with pytest.raises(RepoError, match="I/O error"):
        fsio.atomic_write(tmp_path / "f", b"data")
    assert list(tmp_path.iterdir()) == []
