"""A job's `copy_to: [REPO...]`: after its backups, copy the new points to each.

Called once per job by the run (engine/runner.py, after the job's backups and
before its report is recorded and mailed). What is copied to each repository: the
points this run committed, and the job's points of the same VMs newer than the newest
one already there (a copy that failed last run is sent with this one). The outcome
goes into the job's report: its exit code (engine/report.py: a failed copy after good
backups is partial, 3), `--json` (`copies`) and the email.

Retention in a copy target is its own: the job's run forgets and prunes only in the
job's repository; `hcbak repo forget|prune TARGET` (cron) applies, to the copies there,
the retention of the job that copies them (docs/config.md, "copy_to").

This module imports the copy engine only when a job has `copy_to`: `job run` stays fast.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hcbak.config import Config, JobConfig
    from hcbak.engine.progress import ProgressEvent
    from hcbak.engine.report import JobReport

log = logging.getLogger("hcbak.engine.copy")


def copy_after_job(
    config: Config,
    job: JobConfig,
    job_report: JobReport,
    state_dir: Path,
    progress: Callable[[ProgressEvent], None],
) -> None:
    """Copy this run's new points of `job` to each of its `copy_to` repositories and
    add each copy's report to `job_report.copies`. `progress` takes the run's
    ProgressEvents (kind "copy", one per point and a summary per target)."""
    targets = list(getattr(job, "copy_to", None) or [])
    if not targets or job_report.dry_run or job_report.status != "success":
        return  # a failed, locked or interrupted job has no new points to copy
    from hcbak.engine.copy import CopyEvent, CopyReport, CopySelection, copy_between
    from hcbak.engine.progress import ProgressEvent
    from hcbak.engine.report import VM_OK
    from hcbak.errors import HcbakError

    done = [vm for vm in job_report.vms if vm.status == VM_OK and vm.point_id]
    if not done:
        return
    selection = CopySelection(
        jobs=(job.name,),
        vms=tuple(vm.uuid for vm in done if vm.uuid),
        point_ids=tuple(vm.point_id for vm in done if vm.point_id),
        catch_up=True,
    )
    for target in targets:

        def say(event: CopyEvent, target: str = target) -> None:
            p = event.point
            if event.kind == "warning":
                message = f"to {target}: {event.message}"
            elif p is None or event.kind != "point_done":
                return
            elif p.status == "copied":
                message = (
                    f"to {target}: copied point {p.id}, {p.blocks_sent} of {p.blocks} blocks sent"
                )
            else:
                message = f"to {target}: point {p.id} not copied: {p.reason}"
            _emit(
                progress,
                ProgressEvent("copy", job.name, vm=p.vm_name if p else None, message=message),
            )

        try:
            report = copy_between(config, job.repo, target, selection, say, state_dir=state_dir)
        except HcbakError as exc:  # e.g. the target is the job's repository under another name
            report = CopyReport(job.repo, target, status="failed", reason=exc.one_line())
            report.error_code = exc.exit_code
        job_report.copies.append(report)
        level = logging.INFO if int(report.exit_code()) == 0 else logging.ERROR
        log.log(level, "%s: %s", job.name, report.summary())
        for failed in report.of("failed"):
            log.error("%s: point %s not copied: %s", job.name, failed.id, failed.reason)
        _emit(progress, ProgressEvent("copy", job.name, message=report.summary()))
        if report.status == "interrupted":
            break  # the copies after it do not start


def _emit(progress: Callable[[ProgressEvent], None], event: ProgressEvent) -> None:
    try:
        progress(event)
    except Exception:  # a display problem must never fail a copy
        log.debug("progress callback failed", exc_info=True)
