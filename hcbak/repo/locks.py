"""Repository locks as leases: lock objects under locks/, renewed from a thread.

No flock/fcntl: they are unreliable on NFS and absent on object stores. Each holder
creates its own object `locks/<random>` with a write-once put (a folder: a temp file
hard-linked into place; S3: a conditional PutObject), then looks at the others:
- a shared lock (backup, restore, verify) conflicts with live exclusive locks;
- an exclusive lock (prune) conflicts with every other live lock.
On conflict it deletes its own file and retries until `wait` runs out (two takers that
see each other both back off, so at most one exclusive holder ever proceeds).

The rule that keeps a prune from deleting blocks a live backup depends on (docs/format.md,
"Locks"): staleness is never decided from another machine's clock or from a host name.
- A lock is *dead* when its holder provably cannot be alive: it was taken in this very
  kernel boot (same boot id, and same machine id) and pid namespace, and its pid is gone
  or names a process with another start time. Only this machine can prove that; such a
  lock is removed by the next taker at once.
- Any other lock is *stale* only when THIS host has seen its file's content (which every
  renewal changes: a counter) unchanged for longer than STALE_AFTER on its own clock
  (CLOCK_BOOTTIME). Processes of one host share what they saw through a small record in
  the state dir (`Observations`), so a dead holder elsewhere stops blocking after 30 min.
- The holder renews every REFRESH_INTERVAL. When it could not renew for GIVE_UP_AFTER
  (half the stale age), or its file was removed or replaced, it has lost its lease: it
  renews no more and `check_held` (called before every commit) refuses.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hcbak.errors import LockedError, RepoError
from hcbak.repo import fsio
from hcbak.repo.holders import (
    _clock,
    _clock_domain,
    _test_override,
    _wall_clock,
    holder_identity,
    holder_provably_dead,
)
from hcbak.repo.storage import Location, ObjectMissingError, ObjectStore, open_store
from hcbak.repo.storage.base import ReadOnlyStoreError, object_name

SHARED = "shared"
EXCLUSIVE = "exclusive"
REFRESH_INTERVAL = 60.0  # seconds between renewals of a held lock
STALE_AFTER = 30 * 60.0  # a lock seen unchanged this long by this host is stale
GIVE_UP_AFTER = STALE_AFTER / 2  # a holder that could not renew this long stops
RETRY_INTERVAL = 0.5
OBSERVATIONS_FILE = "lease-observations.json"
FORGET_SIGHTINGS_AFTER = 24 * 3600.0  # of other folders' locks (they were removed since)

DEAD, STALE, LIVE = "dead", "stale", "live"


@dataclass(frozen=True)
class LockInfo:
    """What a lock file says about its holder (to name it, and to tell a dead one)."""

    name: str
    host: str
    pid: int
    kind: str
    start: float
    refreshed: float  # the writer's clock: shown, never used to judge staleness
    command: str
    identity: dict[str, Any] | None = None
    marker: str = ""  # hash of the file's bytes: changes with every renewal
    counter: int = 0

    def age(self, now: float | None = None) -> float:
        """Seconds since the writer's last renewal by the WRITER's clock (display only)."""
        return (now if now is not None else time.time()) - self.refreshed

    def describe(self, unchanged_for: float | None = None) -> str:
        seen = (
            f", its file unchanged for {unchanged_for:.0f} s as seen from here"
            if unchanged_for is not None and unchanged_for >= 1
            else ""
        )
        return (
            f"{self.kind} lock held by {self.command or 'hcbak'} on host {self.host}, "
            f"pid {self.pid}{seen}"
        )

    def to_json(self, verdict: str | None = None, unchanged_for: float = 0.0) -> dict[str, Any]:
        verdict = verdict or (DEAD if is_dead(self) else LIVE)
        return {
            "name": self.name,
            "host": self.host,
            "pid": self.pid,
            "kind": self.kind,
            "start": self.start,
            "refreshed": self.refreshed,
            "age": round(self.age(), 1),  # by the writer's clock: shown, never judged
            "renewals": self.counter,
            "command": self.command,
            "unchanged_for": round(unchanged_for, 1),
            "state": verdict,
            "stale": verdict != LIVE,
        }


# --- who is this process ----------------------------------------------------------------
def is_dead(info: LockInfo) -> bool:
    return info.identity is not None and holder_provably_dead(info.identity)


LOCKS = "locks/"


def read_locks(location: Location) -> list[LockInfo]:
    store = open_store(location)
    out = []
    for key in store.list(LOCKS):
        name = key.removeprefix(LOCKS)
        try:
            raw = store.get(key)
        except ObjectMissingError:
            continue  # released meanwhile
        marker = hashlib.sha256(raw).hexdigest()[:32]
        try:
            d = json.loads(raw)
            identity = d.get("identity")
            out.append(
                LockInfo(
                    name,
                    str(d["host"]),
                    int(d["pid"]),
                    str(d["kind"]),
                    float(d["start"]),
                    float(d["refreshed"]),
                    str(d.get("command", "")),
                    identity if isinstance(identity, dict) else None,
                    marker,
                    int(d.get("counter", 0)),
                )
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            # Damaged (never half-written: puts are atomic): a live exclusive lock of
            # unknown origin until this host has seen it unchanged long.
            when = _written_at(store, key)
            out.append(LockInfo(name, "?", 0, EXCLUSIVE, when, when, "unknown", None, marker))
    return out


def _written_at(store: ObjectStore, key: str) -> float:
    """When a damaged lock was written, for display: its file's mtime on a folder,
    else now (an object store's own time is another machine's clock)."""
    try:
        return os.stat(store.local_root / key).st_mtime if store.local_root else time.time()
    except OSError:
        return time.time()


def _remove_lock(store: ObjectStore, name: str) -> None:
    with contextlib.suppress(RepoError):  # gone already: judged again next time
        store.delete(LOCKS + name)


class Observations:
    """When this host first saw each lock file with its current content.

    Kept in this process and in `<state dir>/lease-observations.json`, shared by the
    processes of this host (times on CLOCK_BOOTTIME, valid within one boot only). A lost
    or unwritable record only makes locks look younger, never older."""

    def __init__(self, state_dir: Path | None) -> None:
        self.path = Path(state_dir) / OBSERVATIONS_FILE if state_dir is not None else None
        if _test_override() is not None:
            self.path = None  # a faked machine (and maybe a faked clock) shares nothing
        self._seen: dict[str, tuple[str, float]] = {}

    def unchanged_for(self, store: ObjectStore, infos: list[LockInfo]) -> dict[str, float]:
        """Seconds (this host's clock) each lock file has been seen with its content."""
        now = _clock()
        boot = _clock_domain()
        stored = self._load(boot)
        root = store.local_root  # sightings are recorded by where the locks are:
        prefix = f"{os.path.abspath(root) if root else store.location.rstrip('/')}/{LOCKS}"
        record = {
            k: v
            for k, v in stored.items()
            if not k.startswith(prefix) and now - v[1] < FORGET_SIGHTINGS_AFTER
        }
        out: dict[str, float] = {}
        for info in infos:
            key = prefix + info.name
            since = min(
                (s for m, s in (self._seen.get(key, ("", now)), stored.get(key, ("", now)))
                 if m == info.marker and s <= now),
                default=now,
            )  # fmt: skip
            self._seen[key] = record[key] = (info.marker, since)
            out[info.name] = max(0.0, now - since)
        if record != stored:
            self._save(boot, record)
        return out

    def _load(self, boot: str) -> dict[str, tuple[str, float]]:
        if self.path is None or not boot:
            return {}
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            if doc.get("clock") != boot:
                return {}
            return {str(k): (str(v[0]), float(v[1])) for k, v in doc["seen"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError):
            return {}

    def _save(self, boot: str, record: dict[str, tuple[str, float]]) -> None:
        if self.path is None or not boot:
            return
        tmp = self.path.with_name(f".{OBSERVATIONS_FILE}.{os.getpid()}.{os.urandom(4).hex()}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"clock": boot, "seen": record}), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError:
            fsio.remove_quietly(tmp)


def judge(
    store: ObjectStore, infos: list[LockInfo], observations: Observations, stale_after: float
) -> dict[str, tuple[str, float]]:
    """name -> (DEAD/STALE/LIVE, seconds this host has seen it unchanged)."""
    seen = observations.unchanged_for(store, infos)
    out = {}
    for info in infos:
        if is_dead(info):
            out[info.name] = (DEAD, seen[info.name])
        elif seen[info.name] > stale_after:
            out[info.name] = (STALE, seen[info.name])
        else:
            out[info.name] = (LIVE, seen[info.name])
    return out


class ReadOnlyRepoError(ReadOnlyStoreError):
    """No lock can be written (read-only mount, snapshot, no permission)."""


# --- holding a lease --------------------------------------------------------------------
class RepoLock:
    """A held lease; use `acquire()` then `release()` (or the repository context)."""

    def __init__(
        self,
        location: Location,
        kind: str,
        *,
        command: str | None = None,
        refresh_interval: float = REFRESH_INTERVAL,
        stale_after: float = STALE_AFTER,
        give_up_after: float | None = None,
        state_dir: Path | None = None,
    ) -> None:
        if kind not in (SHARED, EXCLUSIVE):
            raise ValueError(kind)
        self.store = open_store(location)
        self.kind = kind
        self.name = os.urandom(16).hex()
        self.key = LOCKS + self.name
        self.command = command or " ".join(os.path.basename(a) for a in sys.argv[:3])
        self.refresh_interval = refresh_interval
        self.stale_after = stale_after
        self.give_up_after = give_up_after if give_up_after is not None else stale_after / 2
        self.start = _wall_clock()
        self._identity = holder_identity()
        self._observations = Observations(state_dir)
        self._counter = 0
        self._written = b""
        self._renewed = _clock()  # when the last successful renewal STARTED
        self._lost: str | None = None
        self._io = threading.Lock()  # renewal and check_held never interleave
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _content(self) -> bytes:
        return json.dumps(
            {
                "host": self._identity["host"],
                "pid": os.getpid(),
                "kind": self.kind,
                "start": self.start,
                "refreshed": _wall_clock(),
                "counter": self._counter,
                "command": self.command,
                "identity": self._identity,
            }
        ).encode()

    def _create(self) -> None:
        """Put the holder's lock object, write-once.

        The lock appears complete or not at all (a put is atomic): a holder killed while
        writing it leaves at most a temp file (ignored), never an empty lock that would
        look like an unknown live holder. The put fails if the name exists, like O_EXCL
        (a folder: link(), atomic on NFS; S3: If-None-Match)."""
        self._renewed = _clock()
        data = self._content()
        try:
            created = self.store.put(self.key, data, if_absent=True)
        except ReadOnlyStoreError as exc:
            raise ReadOnlyRepoError(exc.message) from exc
        if not created:  # 128 random bits: never, short of a bug
            raise RepoError(f"lock {object_name(self.store, self.key)} exists already")
        self._written = data

    def _conflicts(self) -> list[tuple[LockInfo, float]]:
        """Live locks in the way. Dead and stale ones are removed on the way: a stale
        holder that is somehow still running then finds its file gone and refuses to
        commit (check_held)."""
        conflicts = []
        infos = [info for info in read_locks(self.store) if info.name != self.name]
        verdicts = judge(self.store, infos, self._observations, self.stale_after)
        for info in infos:
            verdict, seen = verdicts[info.name]
            if verdict != LIVE:
                _remove_lock(self.store, info.name)
                continue
            if self.kind == EXCLUSIVE or info.kind == EXCLUSIVE:
                conflicts.append((info, seen))
        return conflicts

    def acquire(self, wait: float = 0.0) -> None:
        deadline = time.monotonic() + wait
        while True:
            self._create()
            conflicts = self._conflicts()
            if not conflicts:
                break
            _remove_lock(self.store, self.name)
            if time.monotonic() >= deadline:
                info, seen = conflicts[0]
                raise LockedError(
                    f"repository {self.store.location} is locked: {info.describe(seen)}",
                    hint="wait for it to finish; if that process is gone, run "
                    "`hcbak repo unlock NAME` (it removes locks this host has seen unchanged "
                    f"for {self.stale_after / 60:.0f} min) or `--force`",
                )
            time.sleep(RETRY_INTERVAL + int.from_bytes(os.urandom(1)) % 250 / 1000)
        self._thread = threading.Thread(target=self._refresh_loop, name="hcbak-lock", daemon=True)
        self._thread.start()

    # --- renewal and the commit check --------------------------------------------------
    def _still_mine(self) -> bool:
        try:
            return self.store.get(self.key) == self._written
        except ObjectMissingError:
            return False

    def _lose(self, why: str) -> None:
        if self._lost is None:
            self._lost = why

    def _expired(self) -> bool:
        late = _clock() - self._renewed
        if late > self.give_up_after:
            self._lose(f"its lock file could not be renewed for {late:.0f} s")
        return self._lost is not None

    def _renew(self) -> None:
        with self._io:
            if self._expired():
                return
            started = _clock()
            try:
                # An object store renews with a compare-and-swap (S3: If-Match): a lease
                # removed or replaced by another host is never written back.
                replace = getattr(self.store, "replace", None)
                if replace is None and not self._still_mine():
                    self._lose("its lock file was removed or replaced (unlock --force?)")
                    return
                self._counter += 1
                data = self._content()
                if replace is None:
                    self.store.put(self.key, data)
                elif not replace(self.key, self._written, data):
                    self._lose("its lock file was removed or replaced (unlock --force?)")
                    return
            except (OSError, RepoError):
                return  # retried at the next interval, up to give_up_after
            self._written = data
            self._renewed = started

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.refresh_interval):
            self._renew()
            if self._lost is not None:
                return  # a lost lease is never renewed again

    def check_held(self) -> None:
        """Raise LockedError unless this process still holds its lease: renewed within
        give_up_after on this host's clock, and its lock file still there and its own.
        Called right before a commit (a point manifest, a prune's deletions)."""
        with self._io:
            if not self._expired():
                try:
                    if not self._still_mine():
                        self._lose("its lock file was removed or replaced (unlock --force?)")
                except RepoError as exc:
                    self._lose(f"its lock file cannot be read: {exc.message}")
            if self._lost is not None:
                raise LockedError(
                    f"this process lost its {self.kind} lock on repository "
                    f"{self.store.location}: "
                    f"{self._lost}; nothing more is committed",
                    hint="run it again; another process may have judged the lock stale",
                )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._io:
            with contextlib.suppress(RepoError):  # unreadable: left to the stale rule
                if self._lost is None or self._still_mine():
                    _remove_lock(self.store, self.name)


def lock_report(
    location: Location, *, state_dir: Path | None = None, stale_after: float = STALE_AFTER
) -> list[dict[str, Any]]:
    """Every lock with its verdict as this host sees it (and notes the sighting)."""
    store = open_store(location)
    infos = read_locks(store)
    verdicts = judge(store, infos, Observations(state_dir), stale_after)
    return [info.to_json(*verdicts[info.name]) for info in infos]


def unlock(
    location: Location,
    *,
    force: bool = False,
    state_dir: Path | None = None,
    stale_after: float = STALE_AFTER,
) -> tuple[list[LockInfo], list[tuple[LockInfo, float]]]:
    """Remove dead and stale locks (every lock with `force`).

    Returns (removed, kept with the seconds this host has seen each unchanged)."""
    store = open_store(location)
    infos = read_locks(store)
    verdicts = judge(store, infos, Observations(state_dir), stale_after)
    removed, kept = [], []
    for info in infos:
        verdict, seen = verdicts[info.name]
        if force or verdict != LIVE:
            _remove_lock(store, info.name)
            removed.append(info)
        else:
            kept.append((info, seen))
    return removed, kept
