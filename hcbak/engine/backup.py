"""One backup job run: snapshot -> changed blocks -> repository -> commit -> clean.

`run_job` is the whole session for one job (design.md "The data path of one backup
run"): the pre-hook; the repository opens in the background while the cluster session
starts, the VMs are listed and selected (selection.py) and what crashed runs left is
cleaned up (cleanup.py); then `parallel` VMs at a time go through their own flow
(backup_vm.py: snapshot, each disk via backup_disk.py, commit, remove the old base);
then retention, `prune: after_run` and the post-hook (job_steps.py). The state these
steps share is the `Session` (session.py).

Engine code never prints: it reports through `progress(ProgressEvent)` and logging.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

from hcbak.engine.background import entered_in_background
from hcbak.engine.backup_vm import back_up_vm, dry_run_vm
from hcbak.engine.cleanup import (
    await_dead_runs_tasks,
    clean_orphan_clones,
    clean_orphan_snapshots,
    remove_dead_runs_requested_snapshots,
)
from hcbak.engine.job_steps import apply_retention, post_hook, pre_hook, prune_after_run
from hcbak.engine.pipeline import DEFAULT_THREADS
from hcbak.engine.progress import ProgressFn, no_progress
from hcbak.engine.repo_open import open_configured_repo, passphrase_of
from hcbak.engine.report import VM_FAILED, JobReport, VmReport, utcnow
from hcbak.engine.selection import VmTarget, select_vms
from hcbak.engine.session import Session
from hcbak.engine.state import JobLock
from hcbak.errors import (
    APIError,
    ExitCode,
    HcbakError,
    Interrupted,
    LockedError,
    NotFoundError,
    TransportError,
    describe_os_error,
)

if TYPE_CHECKING:
    from hcbak.config import Config, JobConfig
    from hcbak.hypercore.records import VM, UpdateStatus
    from hcbak.repo import Repository

log = logging.getLogger("hcbak.engine")


def run_job(
    config: Config,
    job: JobConfig,
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
        session = Session(config, job, report, sdir, progress or no_progress)
        session.full = full
        session.parallel = max(1, parallel or job.parallel or 1)
        session.threads = threads or _threads_from_env() or DEFAULT_THREADS
        try:
            _run(session)
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
        post_hook(session)
    return report


def _end_job(report: JobReport, status: str, code: ExitCode, reason: str) -> None:
    report.status, report.error_code, report.reason = status, code, " ".join(reason.split())
    log.error("job %s %s: %s", report.job, status, report.reason)


def _threads_from_env() -> int | None:
    """HCBAK_READ_THREADS: pipeline threads per disk (benchmarks measure 1/2/3)."""
    value = os.environ.get("HCBAK_READ_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def _run(s: Session) -> None:
    """The whole run: pre-hook, repository and cluster session, the VMs, prune."""
    s.emit("job_start", message=f"cluster {s.job.cluster}, repo {s.job.repo}")
    pre_hook(s)
    passphrase = passphrase_of(s.repo_cfg)  # once: the prune after the run reuses it

    # The repository opens (its imports, scrypt, lock, index) while this thread
    # imports the cluster client, logs in and lists the VMs.
    def repo_cm() -> AbstractContextManager[Repository]:
        return open_configured_repo(
            s.repo_cfg,
            passphrase=passphrase,
            lock="shared",
            command="job run",
            state_dir=s.state_dir,
        )

    with entered_in_background(repo_cm) as opened_repo:
        _run_with(s, opened_repo)
    if (s.job.prune or "") == "after_run" and s.report.forgotten:
        prune_after_run(s, passphrase)


def _run_with(s: Session, opened_repo: Callable[[], Repository]) -> None:
    """With the cluster: list and select the VMs, clean up, back them up, retention."""
    from hcbak.engine.connect import connection_settings
    from hcbak.hypercore.client import hypercore_session

    with hypercore_session(connection_settings(s.cluster_cfg), warn=s.warn) as hc:
        s.hc = hc
        hc.cancel = s.interrupted  # a stopping run waits for no snapshot task
        _wait_for_update(s)
        vms = hc.list_vms()
        if s.job.quiesce:
            s.cluster_version = _cluster_version(s)
        if not s.report.dry_run:
            s.worker_uuid = _worker_uuid(s, vms)
        selection = select_vms(vms, s.job, worker_vm_uuid=s.worker_uuid)
        for message in selection.warnings:
            s.warn(message)
        for name in selection.missing:
            vm_report = VmReport(name, None, status=VM_FAILED)
            vm_report.reason = f"VM {name} not found on cluster {s.job.cluster}"
            s.report.vms.append(vm_report)
            s.emit("vm_done", vm=name, message=f"failed: {vm_report.reason}")
        # What needs only the cluster and the state dir comes first: the
        # repository's scrypt is often still running on the other core.
        await_dead_runs_tasks(s)
        s.snapshots = {snap.uuid: snap for snap in hc.list_snapshots()}
        if not s.report.dry_run:
            with s.worker_lock:  # a live run's clone in progress is not an orphan
                clean_orphan_clones(s)
        if s.report.dry_run:
            _open_bases(s, opened_repo)
            s.report.vms.extend(dry_run_vm(s, t) for t in selection.targets)
            return
        s.report.vms.extend(_back_up_all(s, selection.targets, opened_repo))
        apply_retention(s)
        remove_dead_runs_requested_snapshots(s)


def _open_bases(s: Session, opened_repo: Callable[[], Repository]) -> None:
    """The open repository, and each VM's latest point of this job in it."""
    s.repo = opened_repo()
    for summary in s.repo.list_points(job=s.job.name):  # oldest first
        s.latest[summary.vm_uuid] = summary
    unreadable = s.repo.unreadable_points
    if unreadable:  # whose VM it is cannot be known: a full read is the safe way on
        why = next(iter(unreadable.values()))
        more = f" and {len(unreadable) - 1} more" if len(unreadable) > 1 else ""
        s.warn(f"{why}{more}: such points are left out (run `hcbak repo verify`)")


def _back_up_all(
    s: Session, targets: list[VmTarget], opened_repo: Callable[[], Repository]
) -> list[VmReport]:
    """`parallel` VMs at a time. Ctrl-C/SIGTERM (KeyboardInterrupt in this thread)
    cancels: running VMs stop at their next block and remove their new snapshot and
    clone, VMs not started are not started, and the run ends with Interrupted.

    The VMs take their snapshots while this thread waits for the repository (its
    scrypt often still runs) and removes a dead run's snapshots; they wait for that
    (`_await_bases`) before anything else. Should the repository fail to open, they
    remove their snapshots and the run fails with the repository's error.
    """
    pool = ThreadPoolExecutor(s.parallel, thread_name_prefix="hcbak-vm")
    futures: list[Future[VmReport]] = []
    try:
        try:
            for target in targets:  # in the try: a VM may be running before the last
                futures.append(pool.submit(back_up_vm, s, target))
            _open_bases(s, opened_repo)
            clean_orphan_snapshots(s)
        except BaseException as exc:
            if isinstance(exc, HcbakError):
                s.stop_reason = f"not backed up: {exc.one_line()}"
            if isinstance(exc, KeyboardInterrupt):
                s.interrupted.set()
            s.cancel.set()  # before the VMs wake: no retry of a lost cause
            raise
        finally:
            s.bases_ready.set()
        results = [f.result() for f in futures]
    except KeyboardInterrupt:
        s.interrupted.set()
        _stop_all(s, futures)
        s.report.vms.extend(_stopped_reports(s, targets, futures))
        raise Interrupted(
            "interrupted: the snapshots and clones of unfinished VMs were removed "
            "(a snapshot whose task was still running: by the next run)"
        )
    except BaseException:  # the job fails as a whole, with this error
        _stop_all(s, futures)
        raise
    finally:
        pool.shutdown(wait=True)
    return results


def _stopped_reports(
    s: Session, targets: list[VmTarget], futures: list[Future[VmReport]]
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
        out.append(VmReport(vm.name, vm.uuid, status=VM_FAILED, reason=s.stop_reason))
    return out


def _stop_all(s: Session, futures: list[Future[VmReport]]) -> None:
    s.cancel.set()
    for f in futures:
        f.cancel()
    wait(futures)


def _wait_for_update(s: Session) -> None:
    """Do not start snapshots while the cluster updates; wait (bounded), then skip
    (ClusterBusyError after the cluster's update_wait)."""

    def waiting(status: UpdateStatus, waited: float) -> None:
        s.emit("warning", message=f"cluster updating ({status.detail}); waiting")

    s.hc.wait_for_update(on_wait=waiting)


def _worker_uuid(s: Session, vms: list[VM]) -> str:
    name = s.cluster_cfg.worker_vm
    if not name:
        raise TransportError(
            f"cluster {s.job.cluster} has no worker VM configured",
            hint=f"hcbak cluster add {s.job.cluster} ... --worker-vm NAME --force",
        )
    for vm in vms:
        if name in (vm.uuid, vm.name):
            return str(vm.uuid)
    raise NotFoundError(f"worker VM {name} not found on cluster {s.job.cluster}")


def _cluster_version(s: Session) -> str:
    """The cluster's version, once per run: whether a snapshot can be quiesced.
    Unknown ("") when the answer has none: every VM then warns, none fails."""
    try:
        return str(s.hc.cluster_info().version)
    except APIError as exc:
        log.warning("%s: cluster version unknown: %s", s.job.name, exc.one_line())
        return ""
