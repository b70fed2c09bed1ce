"""Repository locks as leases: O_EXCL lock files under locks/, refreshed from a thread.

No flock/fcntl: they are unreliable on NFS. Each holder creates its own file
`locks/<random>` with O_EXCL (atomic on NFSv3+), then looks at the other lock files:
- a shared lock (backup, restore, verify) conflicts with live exclusive locks;
- an exclusive lock (prune) conflicts with every other live lock.
On conflict it deletes its own file and retries until `wait` runs out (two takers that
see each other both back off, so at most one exclusive holder ever proceeds).
A daemon thread rewrites the file every REFRESH_INTERVAL; it only touches its own
small file, so it never waits behind data I/O.

A lock is stale when its holder is provably dead: taken on this host, in this boot
(boot_id) and this pid namespace, and its pid is gone or now names a process with another
start time (pid reuse). Such a lock is stale at once, so a killed run never blocks the
next one. Any other lock (another host, another container, an older lock format) is
stale only when its refresh is older than STALE_AFTER and, on this host, its pid is dead.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hcbak.errors import LockedError, RepoError
from hcbak.repo import fsio

SHARED = "shared"
EXCLUSIVE = "exclusive"
REFRESH_INTERVAL = 60.0  # seconds between refreshes of a held lock
STALE_AFTER = 30 * 60.0  # a lock not refreshed for this long may be stale
RETRY_INTERVAL = 0.5


@dataclass(frozen=True)
class LockInfo:
    """What a lock file says about its holder (to name it, and to tell a dead one)."""

    name: str
    host: str
    pid: int
    kind: str
    start: float
    refreshed: float
    command: str
    identity: dict[str, Any] | None = None

    def age(self, now: float | None = None) -> float:
        return (now if now is not None else time.time()) - self.refreshed

    def is_stale(self, now: float | None = None, stale_after: float = STALE_AFTER) -> bool:
        if self.identity is not None and holder_provably_dead(self.identity):
            return True
        if self.age(now) <= stale_after:
            return False
        if self.host != socket.gethostname():
            return True
        return not pid_alive(self.pid)

    def describe(self) -> str:
        return (
            f"{self.kind} lock held by {self.command or 'hcbak'} on host {self.host}, "
            f"pid {self.pid}, refreshed {self.age():.0f} s ago"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "host": self.host,
            "pid": self.pid,
            "kind": self.kind,
            "start": self.start,
            "refreshed": self.refreshed,
            "command": self.command,
            "age": round(self.age(), 1),
            "stale": self.is_stale(),
        }


def _read_first_line(path: str) -> str:
    try:
        with open(path, encoding="ascii") as fh:
            return fh.readline().strip()
    except OSError:
        return ""


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _process_start(pid: int) -> str:
    """Start time of pid in clock ticks since boot (field 22 of /proc/PID/stat), or ""."""
    stat = _read_first_line(f"/proc/{pid}/stat")
    # The command name (field 2) may contain spaces and parentheses: split after the last ")".
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else ""


def holder_identity() -> dict[str, Any]:
    """What lets a later process prove this one dead: host, boot, pid namespace, pid, start."""
    return {
        "host": socket.gethostname(),
        "boot_id": _read_first_line("/proc/sys/kernel/random/boot_id"),
        "pid_ns": _pid_namespace(),
        "pid": os.getpid(),
        "pid_start": _process_start(os.getpid()),
    }


def holder_provably_dead(identity: dict[str, Any]) -> bool:
    """True only when the holder cannot be alive; False whenever in doubt."""
    me = holder_identity()
    if not identity.get("boot_id") or identity.get("host") != me["host"]:
        return False
    if identity["boot_id"] != me["boot_id"]:
        return bool(me["boot_id"])  # same host, rebooted since: every old process is gone
    if not identity.get("pid_ns") or identity.get("pid_ns") != me["pid_ns"]:
        return False  # another container on this host: its pids are not ours to check
    pid = identity.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if not pid_alive(pid):
        return True
    start = identity.get("pid_start")
    return bool(start) and _process_start(pid) not in ("", start)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_locks(root: Path) -> list[LockInfo]:
    out = []
    lock_dir = root / "locks"
    for path in sorted(lock_dir.iterdir()):
        if path.name.startswith(fsio.TMP_PREFIX):
            continue
        try:
            raw = path.read_bytes()
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            continue
        try:
            d = json.loads(raw)
            out.append(
                LockInfo(
                    path.name,
                    str(d["host"]),
                    int(d["pid"]),
                    str(d["kind"]),
                    float(d["start"]),
                    float(d["refreshed"]),
                    str(d.get("command", "")),
                    d.get("identity") if isinstance(d.get("identity"), dict) else None,
                )
            )
        except (ValueError, KeyError, TypeError):
            # Damaged (never half-written: _create links complete files): a fresh exclusive
            # lock of unknown origin until its mtime makes it stale.
            out.append(LockInfo(path.name, "?", 0, EXCLUSIVE, mtime, mtime, "unknown"))
    return out


class RepoLock:
    """A held lease; use `acquire()` then `release()` (or the repository context)."""

    def __init__(
        self,
        root: Path,
        kind: str,
        *,
        command: str | None = None,
        refresh_interval: float = REFRESH_INTERVAL,
        stale_after: float = STALE_AFTER,
    ) -> None:
        if kind not in (SHARED, EXCLUSIVE):
            raise ValueError(kind)
        self.root = root
        self.kind = kind
        self.name = os.urandom(16).hex()
        self.path = root / "locks" / self.name
        self.command = command or " ".join(os.path.basename(a) for a in sys.argv[:3])
        self.refresh_interval = refresh_interval
        self.stale_after = stale_after
        self.start = time.time()
        self._identity = holder_identity()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _content(self) -> bytes:
        return json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "kind": self.kind,
                "start": self.start,
                "refreshed": time.time(),
                "command": self.command,
                "identity": self._identity,
            }
        ).encode()

    def _create(self) -> None:
        """Write the holder to a private temp file, then hard-link it into place.

        The lock file appears complete or not at all: a holder killed while writing it
        leaves only a temp file (ignored), never an empty lock that would look like an
        unknown live holder for STALE_AFTER. link() fails if the name exists, like
        O_EXCL, and is atomic on NFS."""
        tmp = self.path.with_name(f"{fsio.TMP_PREFIX}lock-{self.name}")
        with fsio.translate_os_errors(f"lock file {self.path}"):
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                fsio.write_all(fd, [self._content()])
                fsio._fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, self.path)
            finally:
                fsio.remove_quietly(tmp)

    def _conflicts(self) -> list[LockInfo]:
        conflicts = []
        for info in read_locks(self.root):
            if info.name == self.name or info.is_stale(stale_after=self.stale_after):
                continue
            if self.kind == EXCLUSIVE or info.kind == EXCLUSIVE:
                conflicts.append(info)
        return conflicts

    def acquire(self, wait: float = 0.0) -> None:
        deadline = time.monotonic() + wait
        while True:
            self._create()
            conflicts = self._conflicts()
            if not conflicts:
                break
            fsio.remove_quietly(self.path)
            if time.monotonic() >= deadline:
                raise LockedError(
                    f"repository {self.root} is locked: {conflicts[0].describe()}",
                    hint="wait for it to finish; if that process is gone, run "
                    "`hcbak repo unlock NAME` (stale locks) or `--force`",
                )
            time.sleep(RETRY_INTERVAL + int.from_bytes(os.urandom(1)) % 250 / 1000)
        self._thread = threading.Thread(target=self._refresh_loop, name="hcbak-lock", daemon=True)
        self._thread.start()

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.refresh_interval):
            try:
                fsio.atomic_write(self.path, self._content())
            except (OSError, RepoError):
                pass  # retried at the next interval; the lease has a wide margin

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        fsio.remove_quietly(self.path)


def unlock(root: Path, *, force: bool = False) -> list[LockInfo]:
    """Remove stale locks (all locks with `force`); returns the removed ones."""
    removed = []
    for info in read_locks(root):
        if force or info.is_stale():
            fsio.remove_quietly(root / "locks" / info.name)
            removed.append(info)
    return removed
