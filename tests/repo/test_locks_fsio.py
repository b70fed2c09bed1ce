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
from repo_helpers import PASS, disk_bytes, make_repo, write_point

from hcbak import fsio as files
from hcbak.errors import LockedError, NoSpaceError, RepoError
from hcbak.repo import fsio, open_repo
from hcbak.repo.holders import (
    TEST_IDENTITY_ENV,
    holder_identity,
    holder_provably_dead,
    local_holder_gone,
)
from hcbak.repo.locks import EXCLUSIVE, SHARED, RepoLock, read_locks, unlock


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


def test_a_lock_without_identity_is_stale_only_once_this_host_saw_it_unchanged(
    tmp_path: Path,
) -> None:
    """An hour-old `refreshed` says nothing (it is the writer's clock): the taker must
    itself see the file unchanged for the stale age before it ignores and removes it."""
    root = make_repo(tmp_path / "r")
    fake_lock(root, "old", age=3600, pid=dead_pid())
    with pytest.raises(LockedError, match="exclusive lock"):
        RepoLock(root, EXCLUSIVE, stale_after=0.5).acquire()
    start = time.monotonic()
    taker = RepoLock(root, EXCLUSIVE, stale_after=0.5)
    taker.acquire(wait=5)
    assert time.monotonic() - start >= 0.5
    assert [lk.name for lk in read_locks(root)] == [taker.name], "the stale lock is removed"
    taker.release()


def test_old_lock_of_a_live_local_pid_is_not_stale(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "r")
    fake_lock(root, "alive", age=3600, pid=os.getpid())
    with pytest.raises(LockedError, match=f"pid {os.getpid()}"):
        with open_repo(root, passphrase=PASS, lock="shared"):
            pass
    assert unlock(root)[0] == []
    assert [lk.name for lk in unlock(root, force=True)[0]] == ["alive"]


def test_fresh_lock_of_a_dead_pid_is_not_stale_yet(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "r")
    fake_lock(root, "fresh", age=5, pid=dead_pid())
    with pytest.raises(LockedError):
        with open_repo(root, passphrase=PASS, lock="exclusive"):
            pass


def test_an_old_timestamp_from_another_host_is_not_stale(tmp_path: Path) -> None:
    """Before, a lock whose writer's clock ran 31 minutes behind looked stale at once."""
    root = make_repo(tmp_path / "r")
    fake_lock(root, "remote", age=3600, pid=1, host="elsewhere.example")
    with pytest.raises(LockedError, match=r"elsewhere\.example"):
        with open_repo(root, passphrase=PASS, lock="exclusive"):
            pass


def test_what_one_process_saw_counts_for_the_next_one_on_this_host(tmp_path: Path) -> None:
    """`repo unlock` run twice, the stale age apart, removes a dead foreign lock: each run
    is a new process, so the sighting lives in the state dir."""
    root = make_repo(tmp_path / "r")
    state = tmp_path / "state"
    fake_lock(root, "remote", age=0, pid=1, host="elsewhere.example")
    removed, kept = unlock(root, state_dir=state, stale_after=0.5)
    assert removed == [] and [lk.name for lk, _ in kept] == ["remote"]
    time.sleep(0.6)
    removed, kept = unlock(root, state_dir=state, stale_after=0.5)
    assert [lk.name for lk in removed] == ["remote"] and kept == []
    assert read_locks(root) == []


def test_a_lock_renewed_by_its_holder_never_goes_stale(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "r")
    holder = RepoLock(root, SHARED, refresh_interval=0.05)
    holder.acquire()
    with pytest.raises(LockedError):
        RepoLock(root, EXCLUSIVE, stale_after=0.3).acquire(wait=1.2)
    holder.check_held()
    holder.release()


def test_a_holder_that_cannot_renew_gives_up_and_refuses_to_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_repo(tmp_path / "r")
    with open_repo(root, passphrase=PASS, lock="shared") as repo:
        assert repo.lock is not None
        lock = repo.lock
        lock._stop.set()  # the default thread renews every 60 s; drive renewals here
        lock.give_up_after = 0.3

        def failing_write(*_a: object, **_k: object) -> bool:
            raise OSError(errno.EIO, "I/O error")

        monkeypatch.setattr(fsio, "atomic_write", failing_write)
        lock._renew()
        lock.check_held()  # failures within the margin are retried, not fatal
        time.sleep(0.4)
        lock._renew()
        monkeypatch.undo()
        with pytest.raises(LockedError, match="could not be renewed"):
            write_point(repo, disk_bytes(1, 2))
        lock._renew()  # a lost lease is never renewed again
        with pytest.raises(LockedError):
            lock.check_held()
        assert repo.point_ids() == []


def test_a_holder_whose_lock_file_was_removed_commits_nothing(tmp_path: Path) -> None:
    """`repo unlock --force` (or a taker that judged the lock stale) removed the file:
    a prune may be running, so the backup's next commit refuses."""
    root = make_repo(tmp_path / "r")
    with open_repo(root, passphrase=PASS, lock="shared") as repo:
        write_point(repo, disk_bytes(1, 2))
        unlock(root, force=True)
        with pytest.raises(LockedError, match="removed or replaced"):
            write_point(repo, disk_bytes(2, 2))
        assert len(repo.point_ids()) == 1


def test_atomic_write_replaces(tmp_path: Path) -> None:
    target = tmp_path / "f"
    fsio.atomic_write(target, b"one")
    fsio.atomic_write(target, b"two")
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

    monkeypatch.setattr(files, "_fsync", fsync)
    monkeypatch.setattr(files, "_chmod", chmod)
    fsio.atomic_write(tmp_path / "f", b"data")
    fsio.chmod_tolerant(tmp_path / "f", 0o600)
    assert (tmp_path / "f").read_bytes() == b"data"


def test_other_fsync_errors_are_not_tolerated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fsync(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(files, "_fsync", fsync)
    with pytest.raises(RepoError, match="I/O error"):
        fsio.atomic_write(tmp_path / "f", b"data")
    assert list(tmp_path.iterdir()) == []


def test_no_space_becomes_no_space_error_and_removes_the_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "_fsync", fsync)
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
    with open_repo(root, passphrase=PASS, lock="shared") as repo:
        assert repo.lock is not None
        assert [lk.name for lk in read_locks(root)] == [repo.lock.name], "the dead lock is gone"


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


def test_a_lock_of_the_same_host_name_from_another_boot_is_not_stale(tmp_path: Path) -> None:
    """Another boot id is not "this host rebooted": two machines of one name may share
    the folder (a cloned machine id too). Only a sighting makes such a lock stale."""
    root = make_repo(tmp_path / "r")
    fake_lock_with_identity(root, "other-boot", boot_id="00000000-dead-beef", pid=dead_pid())
    with pytest.raises(LockedError):
        RepoLock(root, SHARED).acquire()


def test_the_test_identity_override_never_makes_a_lock_look_dead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_repo(tmp_path / "r")
    fake_lock_with_identity(root, "faked", pid=dead_pid(), test_identity=True)
    with pytest.raises(LockedError):
        RepoLock(root, SHARED).acquire()  # a dead pid, but written under the override
    (root / "locks" / "faked").unlink()
    fake_lock_with_identity(root, "real", pid=dead_pid())
    monkeypatch.setenv(TEST_IDENTITY_ENV, json.dumps(holder_identity()))
    with pytest.raises(LockedError):
        RepoLock(root, SHARED).acquire()  # a process under the override judges no pid


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


def test_a_job_lock_from_an_earlier_boot_of_this_machine_is_gone() -> None:
    """The job lock lives in this machine's own state dir: there, another boot of this
    machine id does mean a reboot (a repository lock never concludes that)."""
    me = holder_identity()
    earlier = {**me, "boot_id": "00000000-dead-beef", "pid": 1}
    assert local_holder_gone(earlier)
    assert not holder_provably_dead(earlier)
    assert not local_holder_gone({**earlier, "machine_id": "another-machine"})
    older_format = {k: v for k, v in earlier.items() if k != "machine_id"}
    assert local_holder_gone(older_format)
    assert not local_holder_gone({**older_format, "host": "elsewhere.example"})
    assert not local_holder_gone(me)  # this very process


def test_a_prune_whose_lock_was_removed_deletes_nothing(tmp_path: Path) -> None:
    """Its lock removed mid-run (`unlock --force`, or judged stale while it hung), a
    prune stops before its first deletion: a backup may be using those blocks now."""
    from hcbak.repo.prune import prune

    root = make_repo(tmp_path / "r")
    with open_repo(root, passphrase=PASS, lock="shared") as repo:
        gone = write_point(repo, disk_bytes(1, 4))
        write_point(repo, disk_bytes(2, 4))
        repo.forget_points([gone.id])
    before = sorted(p.relative_to(root) for p in root.rglob("*") if "locks" not in p.parts)

    def steal(step: str) -> None:
        if step == "packs-written":
            unlock(root, force=True)

    with open_repo(root, passphrase=PASS, lock="exclusive") as repo:
        with pytest.raises(LockedError, match="lost its exclusive lock"):
            prune(repo, _hook=steal)
    after = sorted(p.relative_to(root) for p in root.rglob("*") if "locks" not in p.parts)
    assert set(before) <= set(after), "nothing was deleted"


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


@pytest.mark.parametrize("mask", [0o000, 0o077], ids=["000", "077"])
def test_the_one_writer_gives_each_caller_its_mode(tmp_path: Path, mask: int) -> None:
    """Completion scripts and systemd units are 0644 (other users' shells read them),
    the config and the state files 0600: one writer, the mode passed in."""
    from hcbak.cli.owned_files import write_file

    old = os.umask(mask)
    try:
        assert write_file(tmp_path / "unit", "[Unit]\n") == "written"
        files.write_atomic(tmp_path / "state.json", b"{}")
    finally:
        os.umask(old)
    assert (_mode(tmp_path / "unit"), _mode(tmp_path / "state.json")) == (0o644, 0o600)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "unit"]


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

    monkeypatch.setattr(files, "_chmod", refuse)
    monkeypatch.setattr(files, "_fchmod", refuse)
    root = make_repo(tmp_path / "repo")
    with open_repo(root, passphrase=PASS) as repo:
        assert repo.list_points() == []


def test_other_chmod_errors_are_not_tolerated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args: object) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(files, "_fchmod", fail)
    with pytest.raises(RepoError, match="I/O error"):
        fsio.atomic_write(tmp_path / "f", b"data")
    assert list(tmp_path.iterdir()) == []
