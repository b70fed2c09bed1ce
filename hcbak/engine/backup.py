"""One backup job run: snapshot -> changed blocks -> repository -> commit -> clean.

`run_job` is the whole session for one job (design.md "The data path of one backup
run"). Per VM, in `parallel` threads:

1. snapshot `hcbak:<job>:<point id>` (replication false) - or, for a replication
   target, its newest replicated snapshot (we never snapshot or delete those) - while
   the repository opens; the rest waits for it;
2. per disk, the base is the disk's serial in this VM's latest point of this job; if
   that snapshot still exists and nothing forbids it, snapDiff(base -> new) gives the
   changed blocks, else a full read with the reason (cbt.py);
3. clone the snapshot disk onto the worker, find its device, read the blocks through
   the pipeline (pipeline.py) into the repository;
4. commit the point (save_point writes the manifest after the data);
5. delete the clone, then the previous hcbak snapshot (the new one is the next base).
On any failure the new snapshot and clone are deleted and the old base is kept; the VM
is retried `retries` times after `retry_wait` while the other VMs continue.

Engine code never prints: it reports through `progress(ProgressEvent)` and logging.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hcbak import __version__
from hcbak.engine import cbt
from hcbak.engine.background import entered_in_background
from hcbak.engine.pipeline import DEFAULT_THREADS, back_up_disk
from hcbak.engine.report import (
    VM_FAILED,
    VM_OK,
    VM_SKIPPED,
    DiskReport,
    JobReport,
    VmReport,
    status_word,
    utcnow,
)
from hcbak.engine.selection import VmTarget, select_vms
from hcbak.engine.state import (
    JobLock,
    WorkerLock,
    forget_clone,
    forget_snapshot_request,
    forget_task,
    journal_clone,
    journal_snapshot_request,
    journal_task,
    journaled_clones,
    live_clone_uuids,
    snapshot_requests_of_dead_runs,
    tasks_of_dead_runs,
)
from hcbak.errors import (
    APIError,
    ClusterBusyError,
    ExitCode,
    HcbakError,
    HookError,
    Interrupted,
    LockedError,
    NotFoundError,
    QuiesceRefusedError,
    TaskFailedError,
    TaskTimeoutError,
    TransportError,
    describe_os_error,
)
from hcbak.hypercore.quiesce import CRASH, plan_quiesce
from hcbak.transport.device import list_devices, locate_device
from hcbak.transport.reader import DiskReader

log = logging.getLogger("hcbak.engine")

LABEL_PREFIX = "hcbak"


def snapshot_label(job: str, point_id: str) -> str:
    return f"{LABEL_PREFIX}:{job}:{point_id}"


def label_point_id(label: str, job: str) -> str | None:
    """The point id in an hcbak snapshot label of `job`, else None (not ours)."""
    prefix = f"{LABEL_PREFIX}:{job}:"
    return label[len(prefix) :] if label.startswith(prefix) and len(label) > len(prefix) else None


@dataclass(frozen=True)
class ProgressEvent:
    """What the CLI shows: kind is job_start, vm_start, disk_start, disk_progress,
    disk_done, vm_done, vm_retry, warning, job_done."""

    kind: str
    job: str
    vm: str | None = None
    disk: str | None = None
    message: str = ""
    done: int = 0  # bytes processed (disk_progress: since the last event)
    total: int = 0  # bytes to process on this disk

    def line(self) -> str:
        """`job/vm disk: what: message`, as the plain display and the run log show it."""
        where = self.job + (f"/{self.vm}" if self.vm else "")
        where += f" {self.disk}" if self.disk else ""
        what = _EVENT_WORDS.get(self.kind, self.kind)
        return f"{where}: {what}{': ' + self.message if self.message else ''}"


_EVENT_WORDS = {
    "job_start": "job started",
    "vm_start": "backing up",
    "disk_start": "reading",
    "disk_done": "done",
    "vm_done": "finished",
    "vm_retry": "retry",
    "warning": "warning",
}


ProgressFn = Callable[[ProgressEvent], None]


def _no_progress(event: ProgressEvent) -> None:
    pass


def run_job(
    config: Any,
    job: Any,
    *,
    full: bool = False,
    parallel: int | None = None,
    dry_run: bool = False,
    progress: ProgressFn | None = None,
    state_dir: Path | None = None,
    threads: int | None = None,
) -> JobReport:
    """Run one job; LockedError when it is already running, else a JobReport."""
    from hcbak.config import state_dir as default_state_dir

    sdir = Path(state_dir) if state_dir else default_state_dir(config)
    report = JobReport(job.name, job.cluster, job.repo, dry_run=dry_run, full=full)
    with JobLock(sdir, job.name):
        session = _Session(config, job, report, sdir, progress or _no_progress)
        session.full = full
        session.parallel = max(1, parallel or job.parallel or 1)
        session.threads = threads or _threads_from_env() or DEFAULT_THREADS
        try:
            session.run()
        except (Interrupted, KeyboardInterrupt) as exc:
            # exit 130, with the report, the email and the run record like any end
            # (cleanup already happened on the way out)
            session.interrupted.set()
            session.cancel.set()
            reason = exc.one_line() if isinstance(exc, Interrupted) else "interrupted"
            _end_job(report, "interrupted", ExitCode.INTERRUPTED, reason)
        except HcbakError as exc:
            # The error's own code: a repository held by prune is busy (5), a secret
            # that cannot be resolved is a config error (2), as for every command.
            status = "locked" if isinstance(exc, LockedError) else "failed"
            _end_job(report, status, exc.exit_code, exc.one_line())
        except OSError as exc:  # the system said no (a repository folder gone, EIO)
            _end_job(report, "failed", ExitCode.FAILED, describe_os_error(exc))
        except Exception as exc:  # a bug: the job still ends with its report and email
            log.exception("job %s: internal error", job.name)
            reason = f"internal error ({type(exc).__name__}: {exc}); see the run log"
            _end_job(report, "failed", ExitCode.FAILED, reason)
        report.finished = utcnow()
        session.post_hook()
    return report


def _end_job(report: JobReport, status: str, code: ExitCode, reason: str) -> None:
    report.status, report.error_code, report.reason = status, code, " ".join(reason.split())
    log.error("job %s %s: %s", report.job, status, report.reason)


def _threads_from_env() -> int | None:
    """HCBAK_READ_THREADS: pipeline threads per disk (benchmarks measure 1/2/3)."""
    value = os.environ.get("HCBAK_READ_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


class _Session:
    """The state of one job run (one cluster session, one open repository)."""

    def __init__(
        self, config: Any, job: Any, report: JobReport, state_dir: Path, progress: ProgressFn
    ) -> None:
        self.config = config
        self.job = job
        self.report = report
        self.state_dir = state_dir
        self.progress = progress
        self.full = False
        self.parallel = 1
        self.threads = DEFAULT_THREADS
        self.cluster_cfg = config.cluster(job.cluster)
        self.repo_cfg = config.repo(job.repo)
        self.hc: Any = None
        self.repo: Any = None
        self.worker_uuid: str | None = None
        self.cluster_version = ""  # pinned per run, read only for a `quiesce` job
        self.worker_lock = WorkerLock(state_dir)  # one hot-add/remove at a time
        self.snapshots: dict[str, Any] = {}  # uuid -> Snapshot, at run start
        self.latest: dict[str, Any] = {}  # vm uuid -> PointSummary of this job
        self.cancel = threading.Event()
        # Set by Ctrl-C/SIGTERM only (not by a repository that fails to open): the exit
        # then waits for no snapshot task, which stays journaled for the next run.
        self.interrupted = threading.Event()
        self.stop_reason = "interrupted"  # what VMs not yet done say once cancel is set
        self.removed_labels: set[str] = set()  # orphaned snapshots this run removed
        self.bases_ready = threading.Event()  # repository open, dead run's snapshots gone

    def emit(self, kind: str, **kw: Any) -> None:
        event = ProgressEvent(kind, self.job.name, **kw)
        if kind not in ("disk_progress", "warning"):  # warnings are logged as warnings
            log.info("%s", event.line())  # the run log tells what the display showed
        try:
            self.progress(event)
        except Exception:  # a display problem must never fail a backup
            log.debug("progress callback failed", exc_info=True)

    def warn(self, message: str) -> None:
        self.report.warnings.append(message)
        log.warning("%s: %s", self.job.name, message)
        self.emit("warning", message=message)

    def warn_vm(self, report: VmReport, message: str) -> None:
        """A VM's warning: in its report (exit 1), the run log and the display, once."""
        if message in report.warnings:
            return  # the same disk on a retried attempt
        report.warnings.append(message)
        log.warning("%s: %s", report.name, message)
        self.emit("warning", vm=report.name, message=message)

    # --- the run ------------------------------------------------------------------------
    def run(self) -> None:
        self.emit("job_start", message=f"cluster {self.job.cluster}, repo {self.job.repo}")
        if self.job.pre_hook and not self.report.dry_run:
            try:
                from hcbak.engine.hooks import run_hook  # subprocess: jobs with hooks only

                output = run_hook(self.job.pre_hook, "pre", self._hook_values())
                log.info("pre-hook output: %s", output.strip())
            except HookError as exc:
                raise HookError(f"job skipped: {exc.message}")
        passphrase = self.repo_cfg.passphrase.resolve() if self.repo_cfg.passphrase else None

        # The repository opens (its imports, scrypt, lock, index) while this thread
        # imports the cluster client, logs in and lists the VMs.
        def repo_cm() -> Any:
            from hcbak.repo import open_repo
            from hcbak.repo.storage import store_for

            path, expect = store_for(self.repo_cfg), self._expected()
            return open_repo(
                path,
                passphrase=passphrase,
                lock="shared",
                command="job run",
                state_dir=self.state_dir,  # where this host keeps its lease sightings
                expect=expect,
            )

        with entered_in_background(repo_cm) as opened_repo:
            self._run_with(opened_repo)
        if (self.job.prune or "") == "after_run" and self.report.forgotten:
            self._prune(passphrase)

    def _run_with(self, opened_repo: Callable[[], Any]) -> None:
        from hcbak.hypercore.client import hypercore_session

        with hypercore_session(self.cluster_cfg, warn=self.warn) as hc:
            self.hc = hc
            hc.cancel = self.interrupted  # a stopping run waits for no snapshot task
            self._wait_for_update()
            vms = hc.list_vms()
            if self.job.quiesce:
                self.cluster_version = self._cluster_version()
            if not self.report.dry_run:
                self.worker_uuid = self._worker_uuid(vms)
            selection = select_vms(vms, self.job, worker_vm_uuid=self.worker_uuid)
            for message in selection.warnings:
                self.warn(message)
            for name in selection.missing:
                vm_report = VmReport(name, None, status=VM_FAILED)
                vm_report.reason = f"VM {name} not found on cluster {self.job.cluster}"
                self.report.vms.append(vm_report)
                self.emit("vm_done", vm=name, message=f"failed: {vm_report.reason}")
            # What needs only the cluster and the state dir comes first: the
            # repository's scrypt is often still running on the other core.
            self._await_dead_runs_tasks()
            self.snapshots = {s.uuid: s for s in hc.list_snapshots()}
            if not self.report.dry_run:
                with self.worker_lock:  # a live run's clone in progress is not an orphan
                    self._clean_orphan_clones()
            if self.report.dry_run:
                self._open_bases(opened_repo)
                self.report.vms.extend(self._dry_run(t) for t in selection.targets)
                return
            self.report.vms.extend(self._back_up_all(selection.targets, opened_repo))
            self._apply_retention()
            self._remove_dead_runs_requested_snapshots()

    def _open_bases(self, opened_repo: Callable[[], Any]) -> None:
        """The open repository, and each VM's latest point of this job in it."""
        self.repo = opened_repo()
        for summary in self.repo.list_points(job=self.job.name):  # oldest first
            self.latest[summary.vm_uuid] = summary
        unreadable = self.repo.unreadable_points
        if unreadable:  # whose VM it is cannot be known: a full read is the safe way on
            why = next(iter(unreadable.values()))
            more = f" and {len(unreadable) - 1} more" if len(unreadable) > 1 else ""
            self.warn(f"{why}{more}: such points are left out (run `hcbak repo verify`)")

    def _back_up_all(
        self, targets: list[VmTarget], opened_repo: Callable[[], Any]
    ) -> list[VmReport]:
        """`parallel` VMs at a time. Ctrl-C/SIGTERM (KeyboardInterrupt in this thread)
        cancels: running VMs stop at their next block and remove their new snapshot and
        clone, VMs not started are not started, and the run ends with Interrupted.

        The VMs take their snapshots while this thread waits for the repository (its
        scrypt often still runs) and removes a dead run's snapshots; they wait for that
        (`_await_bases`) before anything else. Should the repository fail to open, they
        remove their snapshots and the run fails with the repository's error.
        """
        pool = ThreadPoolExecutor(self.parallel, thread_name_prefix="hcbak-vm")
        futures: list[Future[VmReport]] = []
        try:
            try:
                for target in targets:  # in the try: a VM may be running before the last
                    futures.append(pool.submit(self._back_up_vm, target))
                self._open_bases(opened_repo)
                self._clean_orphan_snapshots()
            except BaseException as exc:
                if isinstance(exc, HcbakError):
                    self.stop_reason = f"not backed up: {exc.one_line()}"
                if isinstance(exc, KeyboardInterrupt):
                    self.interrupted.set()
                self.cancel.set()  # before the VMs wake: no retry of a lost cause
                raise
            finally:
                self.bases_ready.set()
            results = [f.result() for f in futures]
        except KeyboardInterrupt:
            self.interrupted.set()
            self._stop_all(futures)
            self.report.vms.extend(self._stopped_reports(targets, futures))
            raise Interrupted(
                "interrupted: the snapshots and clones of unfinished VMs were removed "
                "(a snapshot whose task was still running: by the next run)"
            )
        except BaseException:  # the job fails as a whole, with this error
            self._stop_all(futures)
            raise
        finally:
            pool.shutdown(wait=True)
        return results

    def _stopped_reports(
        self, targets: list[VmTarget], futures: list[Future[VmReport]]
    ) -> list[VmReport]:
        """Every VM's report once the run stopped: those that ran tell how they ended,
        those never started are failed with the stop reason."""
        out = []
        for i, target in enumerate(targets):
            future = futures[i] if i < len(futures) else None  # None: never submitted
            if future is not None and not future.cancelled() and future.exception() is None:
                out.append(future.result())
                continue
            vm = target.vm
            out.append(VmReport(vm.name, vm.uuid, status=VM_FAILED, reason=self.stop_reason))
        return out

    def _stop_all(self, futures: list[Future[VmReport]]) -> None:
        self.cancel.set()
        for f in futures:
            f.cancel()
        wait(futures)

    def _await_bases(self) -> None:
        """Wait until the repository is open and a dead run's snapshots are removed."""
        self.bases_ready.wait()
        if self.cancel.is_set():
            raise Interrupted(self.stop_reason)

    def _wait_for_update(self) -> None:
        """Do not start snapshots while the cluster updates; wait (bounded), then skip.

        update_status.json answers 404 on a cluster that was never updated
        (hypercore-api.md): that is the normal state of many clusters, so it counts as
        idle here; anything else that is not COMPLETE/COMPLETE (an update phase, 502,
        timeouts) means wait. ClusterBusyError after the cluster's update_wait.
        """
        limit = float(self.cluster_cfg.update_wait)
        poll = min(30.0, max(0.2, limit / 20))
        started = time.monotonic()
        while True:
            status = self.hc.update_status()
            if status.idle or "HTTP 404" in status.detail:
                return
            waited = time.monotonic() - started
            if waited >= limit:
                raise ClusterBusyError(
                    f"skipped: cluster {self.job.cluster} is updating ({status.detail}); "
                    f"waited {waited:.0f} s",
                    hint="the next run tries again; raise update_wait to wait longer",
                )
            self.emit("warning", message=f"cluster updating ({status.detail}); waiting")
            if self.cancel.wait(min(poll, limit - waited)):
                return

    def _worker_uuid(self, vms: list[Any]) -> str:
        name = self.cluster_cfg.worker_vm
        if not name:
            raise TransportError(
                f"cluster {self.job.cluster} has no worker VM configured",
                hint=f"hcbak cluster add {self.job.cluster} ... --worker-vm NAME --force",
            )
        for vm in vms:
            if name in (vm.uuid, vm.name):
                return str(vm.uuid)
        raise NotFoundError(f"worker VM {name} not found on cluster {self.job.cluster}")

    # --- cleanup of a crashed run ---------------------------------------------------------
    def _clean_orphan_snapshots(self) -> None:
        """Remove the hcbak snapshots a crashed run of this job left behind: only labels
        `hcbak:<job>:<point>`, and kept is the one the VM's latest committed point was
        taken from (the next base). Its clones went first (`_clean_orphan_clones`:
        only those in our journal, never a disk someone else attached to the worker).
        """
        keep = {s.snapshot_uuid for s in self.latest.values() if s.snapshot_uuid}
        unreadable = self.repo.unreadable_points  # their snapshots may be all that is left
        for snap in list(self.snapshots.values()):
            point_id = label_point_id(snap.label, self.job.name)
            if point_id is None or point_id in unreadable or snap.uuid in keep:
                continue
            try:
                self.hc.delete_snapshot(snap.uuid)
                self.snapshots.pop(snap.uuid, None)
                self.removed_labels.add(snap.label)
                log.info("removed orphaned snapshot %s (%s)", snap.uuid, snap.label)
            except HcbakError as exc:
                self.warn(f"could not remove orphaned snapshot {snap.label}: {exc.one_line()}")

    def _cluster_version(self) -> str:
        """The cluster's version, once per run: whether a snapshot can be quiesced.
        Unknown ("") when the answer has none: every VM then warns, none fails."""
        try:
            return str(self.hc.cluster_info().version)
        except APIError as exc:
            log.warning("%s: cluster version unknown: %s", self.job.name, exc.one_line())
            return ""

    def _create_snapshot(self, vm: Any, label: str, report: VmReport) -> tuple[Any, str]:
        """The VM's snapshot and its consistency ("application" or "crash").

        A `quiesce` job asks for an application-consistent snapshot where the cluster
        and the VM's guest agent allow it (hypercore/quiesce.py) and warns for this VM
        where not; a cluster that refuses the request gets a crash-consistent one.

        The snapshot task is journaled while it runs (see tasks_of_dead_runs). It
        stays journaled when we cannot know it ended (a timeout, a lost connection):
        the next run waits for it before it looks for orphans."""
        plan = plan_quiesce(bool(self.job.quiesce), self.cluster_version, vm.guest_agent_state)
        if plan.warning:
            self.warn_vm(report, plan.warning)
        consistency = plan.consistency
        started: list[str] = []

        def accepted(task: str) -> None:
            journal_task(self.state_dir, task, self.job.cluster)
            started.append(task)

        def settled() -> None:
            for task in started:
                forget_task(self.state_dir, task)
            forget_snapshot_request(self.state_dir, label)

        journal_snapshot_request(self.state_dir, self.job.cluster, vm.uuid, label)
        try:
            try:
                snap = self.hc.create_snapshot(
                    vm.uuid, label, accepted=accepted, quiesce=plan.attempt
                )
            except QuiesceRefusedError as exc:
                self.warn_vm(
                    report,
                    "crash-consistent snapshot: the cluster refused the quiesced snapshot "
                    f"request ({exc.one_line()})",
                )
                consistency = CRASH
                snap = self.hc.create_snapshot(vm.uuid, label, accepted=accepted)
        except TaskFailedError as exc:
            if not isinstance(exc, TaskTimeoutError):  # it ended in ERROR: nothing to await
                settled()
            raise
        settled()
        return snap, consistency

    def _remove_dead_runs_requested_snapshots(self) -> None:
        """Snapshots a killed run asked for just before it died, before it learnt their
        task: they may appear after this run looked for orphans, so look again at the
        end. Such a snapshot cannot be any point's base (the point commits after it)."""
        for entry in snapshot_requests_of_dead_runs(self.state_dir, self.job.cluster):
            label, vm_uuid = str(entry["label"]), str(entry["vm"])
            if label_point_id(label, self.job.name) is None:
                continue  # another job's: its own runs look after it
            try:
                found = self.hc.find_snapshot(vm_uuid, label)
                if found is not None:
                    self.hc.delete_snapshot(found.uuid)
                    log.info("removed snapshot %s (%s) of an interrupted run", found.uuid, label)
            except NotFoundError:
                found = None  # the VM is gone, and its snapshots with it
            except HcbakError as exc:
                log.info("snapshot %s of an interrupted run: %s", label, exc.one_line())
                continue
            age = time.time() - float(entry.get("created") or 0)
            gone = found is not None or label in self.removed_labels
            if gone or age > float(self.cluster_cfg.task_timeout):
                forget_snapshot_request(self.state_dir, label)

    def _await_dead_runs_tasks(self) -> None:
        """Before looking for what crashed runs left: their snapshot and clone tasks may
        still be running, and what such a task makes appears only when it is done."""
        for task in tasks_of_dead_runs(self.state_dir, self.job.cluster):
            try:
                self.hc.wait_task(task, what="task of an interrupted run")
            except HcbakError as exc:  # failed (nothing made) or too slow: cleanup tells
                log.info("task %s of an interrupted run: %s", task, exc.one_line())
            forget_task(self.state_dir, task)  # a clone's task: its entry stays

    def _clean_orphan_clones(self) -> None:
        for entry in journaled_clones(self.state_dir, self.job.cluster):
            uuids = [str(entry.get("clone_uuid"))]
            if entry.get("pending"):
                uuids = self._pending_clone_candidates(entry)
            for uuid in uuids:
                try:
                    self.hc.delete_block_device(uuid)
                    log.info("removed orphaned clone %s", uuid)
                except NotFoundError:
                    pass
                except HcbakError as exc:
                    self.warn(f"could not remove orphaned clone {uuid}: {exc.one_line()}")
                    continue
            forget_clone(self.state_dir, str(entry.get("clone_uuid")))

    def _pending_clone_candidates(self, entry: dict[str, Any]) -> list[str]:
        """Disks that appeared on the worker after a crashed run's pending clone call:
        not there before it, of the clone's capacity, and not any live run's clone."""
        worker = str(entry.get("worker") or self.worker_uuid)
        before = set(entry.get("worker_disks") or [])
        live = live_clone_uuids(self.state_dir)
        try:
            disks = self.hc.get_vm(worker).disks
        except NotFoundError:
            return []
        return [
            d.uuid
            for d in disks
            if d.uuid not in before
            and d.uuid not in live
            and int(d.capacity) == int(entry.get("capacity") or -1)
        ]

    # --- one VM -------------------------------------------------------------------------
    def _back_up_vm(self, target: VmTarget) -> VmReport:
        vm = target.vm
        report = VmReport(vm.name, vm.uuid, started=utcnow())
        report.source = "replica snapshot" if target.replica else "snapshot"
        self.emit("vm_start", vm=vm.name, message=f"{len(target.disks)} disk(s)")
        for skipped in target.skipped:
            if skipped.warning:
                self.warn_vm(report, f"disk slot {skipped.slot}: {skipped.reason}")
        t0 = time.monotonic()
        attempts = 1 + max(0, int(self.job.retries))
        for attempt in range(1, attempts + 1):
            if self.cancel.is_set():
                report.status, report.reason = VM_FAILED, self.stop_reason
                break
            report.attempts = attempt
            try:
                self._attempt(target, report)
                report.status = VM_OK
                report.reason = ""
                break
            except Exception as exc:  # every failure of one VM is that VM's, not the run's
                reason = (
                    exc.one_line()
                    if isinstance(exc, HcbakError)
                    else f"{type(exc).__name__}: {exc}"
                )
                log.error(
                    "%s: attempt %d failed: %s",
                    vm.name,
                    attempt,
                    reason,
                    exc_info=not isinstance(exc, HcbakError),
                )
                report.status = VM_FAILED
                report.reason = reason
                if attempt < attempts and not self.cancel.is_set():
                    self.emit(
                        "vm_retry",
                        vm=vm.name,
                        message=f"attempt {attempt} failed: {reason}; "
                        f"retrying in {self.job.retry_wait:g} s",
                    )
                    if self.cancel.wait(float(self.job.retry_wait)):
                        break
        report.duration = time.monotonic() - t0
        done = f"point {report.point_id}" if report.status == VM_OK else f"failed: {report.reason}"
        self.emit("vm_done", vm=vm.name, message=done)
        return report

    def _attempt(self, target: VmTarget, report: VmReport) -> None:
        from hcbak.repo.points import new_point_id  # no need to wait for the repository

        vm = target.vm
        report.disks = []
        report.timings = type(report.timings)()
        point_id = new_point_id()
        if target.replica:
            snap = self._newest_replica_snapshot(vm)
            created = False
            report.consistency = CRASH  # hcbak did not take it: nothing says it was quiesced
            if self.job.quiesce:
                self.warn_vm(report, "crash-consistent: a replica is backed up from its "
                             "newest replicated snapshot, which hcbak cannot quiesce")  # fmt: skip
        else:
            label = snapshot_label(self.job.name, point_id)
            snap, report.consistency = self._create_snapshot(vm, label, report)
            created = True
        report.snapshot_uuid = snap.uuid
        # Clones are removed in the background while the point commits; every removal
        # has ended before this attempt returns (or is retried).
        removals: list[Future[None]] = []
        early: _Clone | None = None
        try:
            try:
                if target.disks and not self.bases_ready.is_set():
                    # The repository still opens: clone the first disk meanwhile.
                    first = target.disks[0]
                    capacity = self._snapshot_capacity(snap, first)
                    early = self._clone(first, snap, capacity, removals)
                    early.open()
                self._await_bases()
                previous = self._previous_point(vm.uuid)
                images = [
                    self._back_up_disk(
                        vm, disk, snap, previous, report, removals, early if i == 0 else None
                    )
                    for i, disk in enumerate(target.disks)
                ]
                self._commit(vm, snap, point_id, images, report)
            except BaseException:
                if early is not None and not early.handed_over:
                    early.__exit__(None, None, None)
                if created:
                    self._delete_snapshot_quietly(snap.uuid, report)
                raise
            report.point_id = point_id
            if (
                previous is not None
                and previous.snapshot_uuid
                and previous.snapshot_uuid != snap.uuid
            ):
                old = self.snapshots.get(previous.snapshot_uuid)
                if old is not None and label_point_id(old.label, self.job.name) is not None:
                    self._delete_snapshot_quietly(old.uuid, report, warn=True)
        finally:
            wait(removals)

    def _previous_point(self, vm_uuid: str) -> Any | None:
        summary = self.latest.get(vm_uuid)
        return self.repo.load_point(summary.id) if summary is not None else None

    def _newest_replica_snapshot(self, vm: Any) -> Any:
        """A replication target's newest snapshot: the source we back it up from."""
        snaps = self.hc.list_snapshots(vm.uuid)
        if not snaps:
            raise HcbakError(f"replica VM {vm.name} has no replicated snapshot yet")
        order = {u: i for i, u in enumerate(vm.snap_uuids)}  # snapUUIDs: oldest first
        return max(snaps, key=lambda s: (order.get(s.uuid, -1), s.timestamp))

    def _delete_snapshot_quietly(self, uuid: str, report: VmReport, *, warn: bool = False) -> None:
        try:
            self.hc.delete_snapshot(uuid)
            self.snapshots.pop(uuid, None)
            log.info("%s: deleted snapshot %s", report.name, uuid)
        except NotFoundError:
            pass
        except HcbakError as exc:
            message = f"could not delete snapshot {uuid}: {exc.one_line()} (removed next run)"
            if warn:
                self.warn_vm(report, message)
            else:
                log.warning("%s: %s", report.name, message)

    def _commit(
        self, vm: Any, snap: Any, point_id: str, images: list[Any], report: VmReport
    ) -> None:
        from hcbak.repo import Point

        definition = dict(snap.domain.raw) if snap.domain is not None else dict(vm.raw)
        totals = report.totals()
        point = Point(
            id=point_id,
            job=self.job.name,
            cluster=self.job.cluster,
            vm_uuid=vm.uuid,
            vm_name=vm.name,
            created=utcnow(),
            vm=definition,
            snapshot_uuid=snap.uuid,
            snapshot_label=snap.label,
            consistency=report.consistency or CRASH,
            disks=images,
            stats={
                **totals,
                "source": report.source,
                "incremental": all(i.incremental for i in images) if images else False,
            },
            hcbak_version=__version__,
        )
        self.repo.save_point(point)  # the commit: manifest written after its data

    # --- one disk -----------------------------------------------------------------------
    def _back_up_disk(
        self,
        vm: Any,
        disk: Any,
        snap: Any,
        previous: Any | None,
        report: VmReport,
        removals: list[Future[None]] | None = None,
        clone: _Clone | None = None,
    ) -> Any:
        """One disk into the repository; `clone` is its clone when already made."""
        from hcbak.repo import DiskImage

        block_size = int(self.repo.config.block_size)
        capacity = self._snapshot_capacity(snap, disk)
        disk_report = DiskReport(disk.uuid, int(disk.slot), str(disk.type), capacity)
        report.disks.append(disk_report)
        base = _find_disk(previous, disk.uuid)
        plan = self._plan(disk, snap, previous, base, capacity, block_size)
        label = f"slot {disk.slot}"
        prev_map = base.block_map if base is not None and base.capacity == capacity else None
        if plan.incremental and prev_map is not None:
            heal = prev_map.positions_of(self.repo.set_aside_ids())
            if heal:  # unchanged, but the stored copy is damaged: read and store again
                log.info("disk %s: %d damaged blocks read again", label, len(heal))
                plan = cbt.with_blocks(plan, heal)
        if plan.reason in cbt.UNEXPECTED_FALLBACKS:
            self.warn_vm(report, f"disk {label}: full read, {plan.reason}")
        self.emit(
            "disk_start",
            vm=vm.name,
            disk=label,
            total=plan.blocks_to_read * block_size,
            message=plan.reason,
        )
        t0 = time.monotonic()
        clone = clone if clone is not None else self._clone(disk, snap, capacity, removals)
        with clone as path, DiskReader(path) as reader:
            result = back_up_disk(
                reader,
                self.repo,
                plan,
                prev_map,
                disk_report,
                block_size=block_size,
                threads=self.threads,
                progress=lambda n: self.emit("disk_progress", vm=vm.name, disk=label, done=n),
                cancel=self.cancel,
            )
        disk_report.duration = time.monotonic() - t0
        report.timings.add(result.timings)
        self.emit(
            "disk_done",
            vm=vm.name,
            disk=label,
            message=f"{disk_report.blocks_read} blocks read, "
            f"{disk_report.blocks_new} new ({plan.reason})",
        )
        return DiskImage(
            uuid=disk.uuid,
            slot=int(disk.slot),
            type=str(disk.type),
            capacity=capacity,
            block_size=block_size,
            block_map=result.block_map,
            serial=snap.serial_for(disk.uuid),
            incremental=plan.incremental,
            cbt_reason=plan.reason,
        )

    @staticmethod
    def _snapshot_capacity(snap: Any, disk: Any) -> int:
        # The snapshot's own domain has the disk as it was when the snapshot was taken.
        if snap.domain is not None:
            frozen = snap.domain.disk(disk.uuid)
            if frozen is not None and frozen.capacity:
                return int(frozen.capacity)
        return int(disk.capacity)

    def _plan(
        self,
        disk: Any,
        snap: Any,
        previous: Any | None,
        base: Any | None,
        capacity: int,
        block_size: int,
    ) -> cbt.ReadPlan:
        """Incremental from snapDiff when the base allows it, else full with the reason."""
        reason = None
        if self.full:
            reason = cbt.REASON_FORCED_FULL
        elif base is None or previous is None:
            reason = cbt.REASON_NO_BASE
        elif base.capacity != capacity:
            reason = cbt.REASON_RESIZED
        elif base.block_size != block_size:
            reason = cbt.REASON_BLOCK_SIZE
        elif previous.snapshot_uuid != snap.uuid and previous.snapshot_uuid not in self.snapshots:
            reason = cbt.REASON_BASE_DELETED
        elif base.serial is None or snap.serial_for(disk.uuid) is None:
            reason = cbt.REASON_NO_SERIAL
        if reason is not None or base is None:
            return cbt.full_plan(capacity, block_size, reason or cbt.REASON_NO_BASE)
        try:
            intervals = self.hc.snap_diff(
                disk.uuid, int(base.serial), int(snap.serial_for(disk.uuid))
            )
        except HcbakError as exc:
            log.warning("snapDiff of disk %s failed: %s", disk.uuid, exc.one_line())
            return cbt.full_plan(capacity, block_size, cbt.REASON_SNAPDIFF_ERROR)
        return cbt.incremental_plan(intervals, capacity, block_size)

    def _clone(
        self, disk: Any, snap: Any, capacity: int, removals: list[Future[None]] | None = None
    ) -> _Clone:
        return _Clone(self, disk, snap, capacity, removals)

    # --- after the VMs --------------------------------------------------------------------
    def _apply_retention(self) -> None:
        policy = self.job.retention
        if policy is None or policy.is_empty():
            return
        try:
            from hcbak.repo import retention
        except ImportError:
            self.warn("retention is not available in this build; no points forgotten")
            return
        now = utcnow()
        points = self.repo.list_points(job=self.job.name)
        forget = [p.id for p, keep, _reasons in retention.select(points, policy, now) if not keep]
        if forget:
            self.repo.forget_points(forget)
            self.report.forgotten = forget
            log.info("retention forgot %d point(s)", len(forget))

    def _prune(self, passphrase: Any) -> None:
        """`prune: after_run`: free the forgotten points' data, only if nobody else is
        using the repository right now (prune needs the exclusive lock)."""
        from hcbak.repo import open_repo
        from hcbak.repo.prune import prune
        from hcbak.repo.storage import store_for

        try:
            with open_repo(
                store_for(self.repo_cfg),
                passphrase=passphrase,
                lock="exclusive",
                command="job run prune",
                state_dir=self.state_dir,
                expect=self._expected(),
            ) as repo:
                prune(repo)
            self.report.pruned = True
        except LockedError as exc:
            self.warn(f"prune skipped, repository in use: {exc.one_line()}")

    def _expected(self) -> Any:
        """What the config pins about the repository: refused on any mismatch (exit 6)."""
        from hcbak.repo.settings import Expected

        return Expected(encrypted=self.repo_cfg.encrypted, repo_id=self.repo_cfg.repo_id)

    def _hook_values(self) -> dict[str, object]:
        return {
            "job": self.job.name,
            "cluster": self.job.cluster,
            "repo": self.job.repo,
            "dry_run": int(self.report.dry_run),
        }

    def post_hook(self) -> None:
        if not self.job.post_hook or self.report.dry_run:
            return
        code = self.report.exit_code()
        totals = self.report.totals()
        values = {
            **self._hook_values(),
            "status": status_word(code),
            "exit_code": int(code),
            "vms_ok": totals["vms_ok"],
            "vms_failed": totals["vms_failed"],
            "points": " ".join(v.point_id for v in self.report.vms if v.point_id),
        }
        from hcbak.engine.hooks import run_hook

        try:
            output = run_hook(self.job.post_hook, "post", values)
            log.info("post-hook output: %s", output.strip())
        except HookError as exc:
            self.warn(exc.message)

    def _dry_run(self, target: VmTarget) -> VmReport:
        vm = target.vm
        report = VmReport(vm.name, vm.uuid, status=VM_SKIPPED, reason="dry run")
        report.source = "replica snapshot" if target.replica else "snapshot"
        previous = self.latest.get(vm.uuid)
        for disk in target.disks:
            d = DiskReport(disk.uuid, int(disk.slot), str(disk.type), int(disk.capacity))
            d.status = VM_SKIPPED
            has_base = previous is not None and previous.snapshot_uuid in self.snapshots
            d.cbt_used = has_base and not self.full
            d.cbt_reason = (
                cbt.REASON_FORCED_FULL
                if self.full
                else ("snapDiff" if has_base else cbt.REASON_NO_BASE)
            )
            report.disks.append(d)
        report.warnings += [f"disk slot {x.slot}: {x.reason}" for x in target.skipped if x.warning]
        self.emit(
            "vm_done",
            vm=vm.name,
            message="dry run: would back up "
            + ", ".join(f"slot {d.slot} ({d.cbt_reason})" for d in report.disks),
        )
        return report


def _find_disk(point: Any | None, disk_uuid: str) -> Any | None:
    if point is None:
        return None
    return next((d for d in point.disks if d.uuid == disk_uuid), None)


class _Clone:
    """Context manager: hot-add a snapshot disk to the worker, yield its device path,
    always remove it again. Journaled so a crashed run's clone is found next time."""

    def __init__(
        self,
        session: _Session,
        disk: Any,
        snap: Any,
        capacity: int,
        removals: list[Future[None]] | None = None,
    ) -> None:
        self.s = session
        self.disk = disk
        self.snap = snap
        self.capacity = capacity
        self.removals = removals  # when given: remove in the background, future here
        self.clone_uuid: str | None = None
        self.path: Path | None = None
        self.handed_over = False  # entered by a `with`, whose end removes the clone

    def __enter__(self) -> Path:
        self.handed_over = True
        return self.path if self.path is not None else self.open()

    def open(self) -> Path:
        """Make the clone and find its device (before a `with` that uses it, or by it)."""
        s = self.s
        root = Path(s.cluster_cfg.device_root)
        assert s.worker_uuid is not None
        info = {
            "cluster": s.job.cluster,
            "job": s.job.name,
            "snapshot": self.snap.uuid,
            "disk": self.disk.uuid,
            "capacity": self.capacity,
            "worker": s.worker_uuid,
        }
        # A "pending" entry with the worker's disks before the call lets the next run
        # find a clone whose run died before the cluster answered (the only disk that
        # appeared and has this capacity). Once it answers, the entry names the clone and
        # its task: the device appears only when the task is done, possibly after this
        # run died and the next one looked, so the next run waits for that task first.
        pending = f"pending-{os.urandom(8).hex()}"

        def accepted(clone_uuid: str, task: str) -> None:
            journal_clone(s.state_dir, clone_uuid, {**info, "task": task})
            forget_clone(s.state_dir, pending)

        with s.worker_lock:
            before = list_devices(root)
            worker_disks = [d.uuid for d in s.hc.get_vm(s.worker_uuid).disks]
            journal_clone(
                s.state_dir, pending, {**info, "pending": True, "worker_disks": worker_disks}
            )
            # On failure the entry stays: a POST whose answer was lost may still have
            # created the clone, and the next run removes it.
            self.clone_uuid = s.hc.clone_snapshot_disk(
                self.disk.uuid, self.snap.uuid, s.worker_uuid, self.capacity, accepted=accepted
            )
        try:
            self.path = locate_device(root, self.clone_uuid, self.capacity, before=before)
        except BaseException:
            self._remove()
            raise
        return self.path

    def __exit__(self, *exc: object) -> None:
        if self.removals is None or self.clone_uuid is None:
            self._remove()
            return
        remover = ThreadPoolExecutor(1, thread_name_prefix="hcbak-unclone")
        self.removals.append(remover.submit(self._remove))
        remover.shutdown(wait=False)  # its one thread ends after the removal

    def _remove(self) -> None:
        if self.clone_uuid is None:
            return
        uuid, self.clone_uuid = self.clone_uuid, None
        try:
            with self.s.worker_lock:
                self.s.hc.delete_block_device(uuid)
        except NotFoundError:
            pass
        except HcbakError as exc:
            log.warning("could not remove clone %s: %s (removed next run)", uuid, exc.one_line())
            return
        forget_clone(self.s.state_dir, uuid)
