"""`Session`: the state one backup job run shares between its steps.

One job run is one cluster session and one open repository, shared by the job flow
(backup.py), each VM's flow (backup_vm.py), each disk's (backup_disk.py), the cleanup
of what crashed runs left (cleanup.py) and the steps around the backups
(job_steps.py). They all report through the session: `emit` for the display and the
run log, `warn` and `warn_vm` for warnings that change the exit code to 1.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING

from hcbak.engine.pipeline import DEFAULT_THREADS
from hcbak.engine.progress import ProgressEvent, ProgressFn
from hcbak.engine.state import CloneJournal, WorkerLock
from hcbak.errors import Interrupted
from hcbak.transport.hotadd import HotAdd, Worker

if TYPE_CHECKING:
    from hcbak.config import Config, JobConfig
    from hcbak.engine.report import JobReport, VmReport
    from hcbak.hypercore.client import HyperCoreClient
    from hcbak.hypercore.records import Disk, Snapshot
    from hcbak.repo import Point, PointSummary, Repository

log = logging.getLogger("hcbak.engine")

LABEL_PREFIX = "hcbak"


def snapshot_label(job: str, point_id: str) -> str:
    return f"{LABEL_PREFIX}:{job}:{point_id}"


def label_point_id(label: str, job: str) -> str | None:
    """The point id in an hcbak snapshot label of `job`, else None (not ours)."""
    prefix = f"{LABEL_PREFIX}:{job}:"
    return label[len(prefix) :] if label.startswith(prefix) and len(label) > len(prefix) else None


class Session:
    """The state of one job run (one cluster session, one open repository)."""

    hc: HyperCoreClient  # logged in once the run has listed the VMs
    repo: Repository  # open once `bases_ready` is set

    def __init__(
        self,
        config: Config,
        job: JobConfig,
        report: JobReport,
        state_dir: Path,
        progress: ProgressFn,
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
        self.worker_uuid: str | None = None
        self.cluster_version = ""  # pinned per run, read only for a `quiesce` job
        self.worker_lock = WorkerLock(state_dir)  # one hot-add/remove at a time
        self.snapshots: dict[str, Snapshot] = {}  # uuid -> Snapshot, at run start
        self.latest: dict[str, PointSummary] = {}  # vm uuid -> latest point of this job
        self.cancel = threading.Event()
        # Set by Ctrl-C/SIGTERM only (not by a repository that fails to open): the exit
        # then waits for no snapshot task, which stays journaled for the next run.
        self.interrupted = threading.Event()
        self.stop_reason = "interrupted"  # what VMs not yet done say once cancel is set
        self.removed_labels: set[str] = set()  # orphaned snapshots this run removed
        self.bases_ready = threading.Event()  # repository open, dead run's snapshots gone

    def emit(
        self,
        kind: str,
        *,
        vm: str | None = None,
        disk: str | None = None,
        message: str = "",
        done: int = 0,
        total: int = 0,
    ) -> None:
        event = ProgressEvent(kind, self.job.name, vm, disk, message, done, total)
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

    def await_bases(self) -> None:
        """Wait until the repository is open and a dead run's snapshots are removed."""
        self.bases_ready.wait()
        if self.cancel.is_set():
            raise Interrupted(self.stop_reason)

    def previous_point(self, vm_uuid: str) -> Point | None:
        """The VM's latest point of this job: the base of its incremental."""
        summary = self.latest.get(vm_uuid)
        return self.repo.load_point(summary.id) if summary is not None else None

    def hotadd(
        self,
        disk: Disk,
        snap: Snapshot,
        capacity: int,
        removals: list[Future[None]] | None = None,
    ) -> HotAdd:
        """The clone of `disk` in `snap` on the worker (not made until opened)."""
        assert self.worker_uuid is not None
        worker = Worker(
            self.worker_uuid,
            Path(self.cluster_cfg.device_root),
            self.worker_lock,
            CloneJournal(self.state_dir),
        )
        owner = {"cluster": self.job.cluster, "job": self.job.name}
        return HotAdd(
            self.hc, worker, disk.uuid, snap.uuid, capacity, owner=owner, removals=removals
        )

    def hook_values(self) -> dict[str, object]:
        return {
            "job": self.job.name,
            "cluster": self.job.cluster,
            "repo": self.job.repo,
            "dry_run": int(self.report.dry_run),
        }
