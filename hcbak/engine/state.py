"""Small files hcbak keeps in its state dir between runs.

- `locks/job-<name>.lock`: the job lock (one run of a job at a time; exit 5 otherwise).
- `jobs/<name>.json`: last run / last success per job, for `--due` and the RPO watch.
- `clones/<clone uuid>.json`: a journal of the worker clones hcbak created, so a run
  after a crash removes exactly those and never a disk someone else attached.
- `logs/run-<time>-<pid>.log`: the per-run log file.

The state dir is local to the worker, so the job lock is a plain O_EXCL file: the
holder's pid is checked for liveness (a lock left by kill -9 is taken over). Every
file here is 0600 and every folder 0700, whatever the umask (`make_state_dir`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

from hcbak import fsio
from hcbak.errors import LockedError, UsageError
from hcbak.repo.holders import holder_identity, local_holder_gone, pid_alive

log = logging.getLogger(__name__)


def make_state_dir(path: Path) -> None:
    """A folder of the state dir (and the state dir itself), 0700 whatever the umask:
    run logs and journals name VMs, snapshots and clusters."""
    fsio.make_private_dir(path, parents=True)


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    make_state_dir(path.parent)
    fsio.write_atomic(path, json.dumps(data, indent=2, sort_keys=True).encode("utf-8"))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# --- job lock ---------------------------------------------------------------------------
class JobLock:
    """`with JobLock(state_dir, job):` — LockedError (exit 5) naming the holder."""

    def __init__(self, state_dir: Path, job: str) -> None:
        self.path = Path(state_dir) / "locks" / f"job-{job}.lock"
        self.job = job
        self._held = False

    def acquire(self) -> None:
        make_state_dir(self.path.parent)
        me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": datetime.now(UTC).isoformat(),
            "job": self.job,
            "identity": holder_identity(),
        }
        for _ in range(3):
            if self._try_create(me):
                self._held = True
                return
            holder = _read_json(self.path)
            if holder is None or self._stale(holder):
                self._break_stale()
                continue
            raise LockedError(
                f"job {self.job} is already running (pid {holder.get('pid')} on "
                f"{holder.get('host')}, since {holder.get('started')})",
                hint=f"lock file {self.path}",
            )
        raise LockedError(f"could not take the lock of job {self.job}", hint=str(self.path))

    def _try_create(self, me: dict[str, Any]) -> bool:
        # Write the holder to a private file, then link it into place: the link fails
        # if the lock exists, and readers never see a half-written lock file.
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = fsio.open_private(tmp, os.O_WRONLY | os.O_TRUNC)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(me))
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def _stale(self, holder: dict[str, Any]) -> bool:
        identity = holder.get("identity")
        if isinstance(identity, dict):
            return local_holder_gone(identity)
        if holder.get("host") != socket.gethostname():
            return False  # cannot check another host's pid: trust the lock
        pid = holder.get("pid")
        return not isinstance(pid, int) or not pid_alive(pid)

    def _break_stale(self) -> None:
        grave = self.path.with_name(f".{self.path.name}.stale.{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            os.rename(self.path, grave)
            grave.unlink(missing_ok=True)

    def release(self) -> None:
        if self._held:
            self.path.unlink(missing_ok=True)
            self._held = False

    def __enter__(self) -> JobLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


# --- last runs (for --due and alert_after) --------------------------------------------
@dataclass
class JobHistory:
    """When a job last ran and last succeeded (for --due and the RPO alert)."""

    last_run: datetime | None = None
    last_success: datetime | None = None
    last_status: str | None = None
    last_alert: datetime | None = None


def _parse_dt(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def load_history(state_dir: Path, job: str) -> JobHistory:
    data = _read_json(Path(state_dir) / "jobs" / f"{job}.json") or {}
    return JobHistory(
        last_run=_parse_dt(data.get("last_run")),
        last_success=_parse_dt(data.get("last_success")),
        last_status=data.get("last_status"),
        last_alert=_parse_dt(data.get("last_alert")),
    )


def save_history(state_dir: Path, job: str, history: JobHistory) -> None:
    def fmt(dt: datetime | None) -> str | None:
        return dt.isoformat() if dt else None

    _write_json_atomic(
        Path(state_dir) / "jobs" / f"{job}.json",
        {
            "last_run": fmt(history.last_run),
            "last_success": fmt(history.last_success),
            "last_status": history.last_status,
            "last_alert": fmt(history.last_alert),
        },
    )


def parse_duration(text: str) -> timedelta:
    """The config's duration syntax ('36h', '7d'); UsageError when malformed."""
    from hcbak.schedule import parse_duration as _parse

    try:
        return _parse(text)
    except ValueError as exc:
        raise UsageError(str(exc))


def rpo_overdue(history: JobHistory, alert_after: str, now: datetime) -> bool:
    """True when the job has had no successful point for longer than alert_after."""
    limit = parse_duration(alert_after)
    reference = history.last_success or history.last_run
    if reference is None:
        return False  # never ran: nothing to measure yet (the job's first run will say)
    return now - reference > limit


# --- worker lock ----------------------------------------------------------------------
class WorkerLock:
    """One hot-add or removal on the worker VM at a time: across the VM threads of a run
    and across runs of other jobs on this host (they share the state dir).

    HyperCore answers 500 to a mutation of a VM that has a task running, and a new
    clone's device and a crashed run's clone are told apart from the disks present
    before the call. The worker is this host, so a local flock is enough; it goes away
    with the process that held it, however that process ended.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / "worker.lock"
        self._threads = threading.Lock()
        self._fd = -1

    def __enter__(self) -> None:
        self._threads.acquire()
        try:
            make_state_dir(self.path.parent)
            fd = fsio.open_private(self.path, os.O_RDWR)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    log.info("waiting for another run's hot-add or removal on the worker VM")
                    fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
        except BaseException:
            self._threads.release()
            raise
        self._fd = fd

    def __exit__(self, *exc: object) -> None:
        fd, self._fd = self._fd, -1
        try:
            os.close(fd)  # releases the flock
        finally:
            self._threads.release()


# --- clone journal ----------------------------------------------------------------------
def clone_journal_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "clones"


def _writer() -> dict[str, Any]:
    """Who wrote a journal entry: the pid, and the identity that tells a later process
    whether that writer is still alive (a pid alone is reused: pid_max is 32768 here)."""
    return {"pid": os.getpid(), "identity": holder_identity()}


def _writer_alive(entry: dict[str, Any]) -> bool:
    """Whether the process that wrote `entry` is still running. With an identity, a
    pid now used by another process (or thread) is not taken for the writer."""
    identity = entry.get("identity")
    if isinstance(identity, dict):
        return not local_holder_gone(identity)
    pid = entry.get("pid")  # entries written before identities were kept
    return isinstance(pid, int) and pid_alive(pid)


def journal_clone(state_dir: Path, clone_uuid: str, info: dict[str, Any]) -> None:
    entry = dict(info, clone_uuid=clone_uuid, created=time.time(), **_writer())
    _write_json_atomic(clone_journal_dir(state_dir) / f"{clone_uuid}.json", entry)


def forget_clone(state_dir: Path, clone_uuid: str) -> None:
    (clone_journal_dir(state_dir) / f"{clone_uuid}.json").unlink(missing_ok=True)


class CloneJournal:
    """The clone journal of a state dir, as transport.hotadd.HotAdd records into it."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    def record(self, key: str, entry: Mapping[str, Any]) -> None:
        journal_clone(self.state_dir, key, dict(entry))

    def forget(self, key: str) -> None:
        forget_clone(self.state_dir, key)


def journaled_clones(state_dir: Path, cluster: str) -> list[dict[str, Any]]:
    """Clones hcbak created on this cluster by processes that are no longer running."""
    return _entries_of_dead_runs(clone_journal_dir(state_dir), cluster)


def _entries_of_dead_runs(folder: Path, cluster: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob("*.json")):
        entry = _read_json(path)
        if not entry or entry.get("cluster") != cluster:
            continue
        if entry.get("pid") != os.getpid() and _writer_alive(entry):
            continue  # another live run (other job) owns it
        out.append(entry)
    return out


def task_journal_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "tasks"


def _task_file(state_dir: Path, task: str, prefix: str = "") -> Path:
    return task_journal_dir(state_dir) / (prefix + re.sub(r"[^A-Za-z0-9_.-]", "_", task) + ".json")


def journal_task(state_dir: Path, task: str, cluster: str) -> None:
    """A snapshot task this run started: what it creates appears only when it ends."""
    entry = {"task": task, "cluster": cluster, "created": time.time(), **_writer()}
    _write_json_atomic(_task_file(state_dir, task), entry)


def forget_task(state_dir: Path, task: str) -> None:
    _task_file(state_dir, task).unlink(missing_ok=True)


def journal_snapshot_request(state_dir: Path, cluster: str, vm_uuid: str, label: str) -> None:
    """Written before a snapshot POST: a run killed before the cluster's answer leaves
    a snapshot whose task nobody journaled; the next run finds it by this label."""
    entry = {"cluster": cluster, "vm": vm_uuid, "label": label, "created": time.time(),
             **_writer()}  # fmt: skip
    _write_json_atomic(_task_file(state_dir, label, "request-"), entry)


def forget_snapshot_request(state_dir: Path, label: str) -> None:
    _task_file(state_dir, label, "request-").unlink(missing_ok=True)


def snapshot_requests_of_dead_runs(state_dir: Path, cluster: str) -> list[dict[str, Any]]:
    """Snapshot POSTs of runs that died before they learnt the outcome."""
    entries = _entries_of_dead_runs(task_journal_dir(state_dir), cluster)
    return [e for e in entries if e.get("label") and e.get("vm")]


def tasks_of_dead_runs(state_dir: Path, cluster: str) -> list[str]:
    """Snapshot and clone tasks started on this cluster by runs that are gone. A run
    killed while one ran leaves its snapshot or clone to appear later, possibly after
    the next run looked for leftovers: that run waits for these tasks first."""
    entries = _entries_of_dead_runs(task_journal_dir(state_dir), cluster)
    entries += journaled_clones(state_dir, cluster)  # a clone's entry names its task
    return [str(e["task"]) for e in entries if e.get("task")]


def live_clone_uuids(state_dir: Path) -> set[str]:
    """Clone uuids journaled by runs that are still alive (never to be touched)."""
    out: set[str] = set()
    folder = clone_journal_dir(state_dir)
    for path in folder.glob("*.json") if folder.is_dir() else []:
        entry = _read_json(path)
        if entry and _writer_alive(entry) and not entry.get("pending"):
            out.add(str(entry.get("clone_uuid")))
    return out
