"""Running backup jobs: which jobs, one after another, and what follows each.

`plan_run` picks the jobs of a request (named, --all, or those whose schedule came
due); `run_jobs` runs them with `backup.run_job` and, after each job, records the run
(for --due and the RPO watch) and mails its report (`after_job`). With --due it then
runs the RPO watch: an alert, once per alert_after window, for every job without a
recent successful point. SIGTERM ends a run like Ctrl-C does, and every run writes a
log file under <state dir>/logs/.

Engine code never prints: events go to the `Display`, warnings to `warn` (the CLI
shows both on stderr), everything else to logging and the returned `RunReport`.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from hcbak.engine.copy_to import copy_after_job
from hcbak.errors import ExitCode, HcbakError, LockedError, UsageError

if TYPE_CHECKING:
    from hcbak.config import Config, JobConfig
    from hcbak.engine.progress import Display
    from hcbak.engine.report import JobReport, RunReport

log = logging.getLogger("hcbak.engine")

WarnFn = Callable[[str], None]


@dataclass(frozen=True)
class RunRequest:
    """What `hcbak job run` was asked to do: exactly one of names, all_jobs, due."""

    names: list[str] = field(default_factory=list)
    all_jobs: bool = False
    due: bool = False
    dry_run: bool = False
    full: bool = False
    parallel: int | None = None
    # One job run alone: its LockedError propagates ("already running" is the whole
    # story, exit 5) instead of becoming a "locked" line of the report.
    raise_locked_alone: bool = False


@dataclass(frozen=True)
class RunPlan:
    """The jobs a request picked, as of `now` (the RPO watch uses the same instant)."""

    config: Config
    request: RunRequest
    jobs: list[JobConfig]
    now: datetime
    state_dir: Path


def plan_run(config: Config, request: RunRequest, now: datetime | None = None) -> RunPlan:
    """The jobs to run: those named (each once), every job, or those due at `now`."""
    from hcbak.config import state_dir

    sdir = state_dir(config)
    now = now or datetime.now(UTC)
    if request.due:
        jobs = due_jobs(config, sdir, now)
    elif request.all_jobs:
        jobs = list(config.jobs.values())
        if not jobs:
            raise UsageError("no jobs configured", hint="hcbak job create NAME ...")
    else:
        jobs = [config.job(name) for name in dict.fromkeys(request.names)]
    return RunPlan(config, request, jobs, now, sdir)


def run_jobs(plan: RunPlan, display: Display, warn: WarnFn) -> RunReport:
    """Run the planned jobs one after another (the first interrupted one ends the run)
    and return the report; `display` shows the events while the jobs run."""
    from hcbak.engine.report import RunReport, utcnow

    if plan.jobs:
        from hcbak.engine.background import derive_repository_key_early

        derive_repository_key_early(plan.config, plan.jobs[0])
    report = RunReport()
    log_file = start_run_log(plan.state_dir, warn)
    try:
        with sigterm_as_interrupt():
            with display:
                for job in plan.jobs:
                    job_report = run_one(plan, job, display)
                    job_report.log_file = str(log_file.path) if log_file else None
                    copy_after_job(plan.config, job, job_report, plan.state_dir, display.event)
                    report.jobs.append(job_report)
                    after_job(plan.config, plan.state_dir, job, job_report, warn)
                    if job_report.status == "interrupted":
                        break  # the jobs after it do not start
            if plan.request.due and not any(j.status == "interrupted" for j in report.jobs):
                report.alerts = rpo_watch(plan.config, plan.state_dir, plan.now, warn)
    finally:
        if log_file:
            log_file.close()
    report.finished = utcnow()
    return report


def run_one(plan: RunPlan, job: JobConfig, display: Display) -> JobReport:
    """One job's report, also when it ended outside the engine's own handling."""
    from hcbak.engine.backup import run_job
    from hcbak.engine.report import utcnow

    request = plan.request
    try:
        return run_job(
            plan.config,
            job,
            full=request.full,
            parallel=request.parallel,
            dry_run=request.dry_run,
            progress=display.event,
            state_dir=plan.state_dir,
        )
    except LockedError as exc:
        if request.raise_locked_alone and len(plan.jobs) == 1:
            raise
        locked = _job_report(job, request)
        locked.status, locked.reason, locked.finished = "locked", exc.one_line(), utcnow()
        return locked  # its error line comes with the others at the end
    except KeyboardInterrupt:  # outside the engine's own handling (the job lock)
        return _ended(job, request, "interrupted", ExitCode.INTERRUPTED, "")
    except HcbakError as exc:  # e.g. a state dir where the job lock cannot be written
        return _ended(job, request, "failed", exc.exit_code, exc.one_line())
    except OSError as exc:
        from hcbak.errors import describe_os_error

        return _ended(job, request, "failed", ExitCode.FAILED, describe_os_error(exc))


def _job_report(job: JobConfig, request: RunRequest) -> JobReport:
    from hcbak.engine.report import JobReport

    return JobReport(job.name, job.cluster, job.repo, dry_run=request.dry_run, full=request.full)


def _ended(
    job: JobConfig, request: RunRequest, status: str, code: ExitCode, reason: str
) -> JobReport:
    """The report of a job that ended outside the engine: it still gets its email,
    its record and its line in the report."""
    from hcbak.engine.report import utcnow

    ended = _job_report(job, request)
    ended.status, ended.reason, ended.finished = status, reason, utcnow()
    ended.error_code = code
    return ended


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (systemd stop, kill) cleans up like Ctrl-C: snapshots and clones of
    unfinished VMs are removed, the report printed and mailed, the run recorded, before
    exit 130. The previous handler is back afterwards."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (embedded use): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def due_jobs(config: Config, sdir: Path, now: datetime) -> list[JobConfig]:
    """The jobs whose schedule came due since their last run."""
    from hcbak.engine.state import load_history
    from hcbak.schedule import CronSchedule

    out = []
    for job in config.jobs.values():
        if not job.schedule:
            continue
        history = load_history(sdir, job.name)
        # Schedules are the worker's local wall clock, as cron's (docs/config.md); the
        # history holds UTC instants: both are compared as local times.
        last = history.last_run.astimezone() if history.last_run is not None else None
        if CronSchedule.parse(job.schedule).is_due(last, now.astimezone()):
            out.append(job)
    return out


def after_job(
    config: Config, sdir: Path, job: JobConfig, job_report: JobReport, warn: WarnFn
) -> None:
    """What follows a job's backups: record the run for --due / the RPO watch, then
    mail the report if the job asks for it."""
    from hcbak.engine.state import load_history, save_history

    if job_report.dry_run or job_report.status == "locked":
        return
    code = job_report.exit_code()
    history = load_history(sdir, job.name)
    history.last_run = job_report.started
    history.last_status = "ok" if code in (ExitCode.OK, ExitCode.WARNINGS) else "failed"
    if code == ExitCode.INTERRUPTED:
        history.last_status = "interrupted"
    if code in (ExitCode.OK, ExitCode.WARNINGS):
        history.last_success = job_report.started
    try:
        save_history(sdir, job.name, history)
    except OSError as exc:  # the report and the email still go out
        warn(f"cannot record the run of job {job.name} in {sdir}: {exc.strerror or exc}")
    if not job.notify:
        return  # smtplib and the templates load only for jobs that mail
    from hcbak.engine.notify import render_body, render_subject, should_notify

    if should_notify(job_report, job.notify.on):
        subject, body = render_subject(job_report), render_body(job_report)
        send_mail(config, job.notify.to, subject, body, warn)


def rpo_watch(config: Config, sdir: Path, now: datetime, warn: WarnFn) -> list[str]:
    """Alert (once per alert_after window) on jobs without a recent successful point;
    returns the alerts (each is a warning of the run: exit 1)."""
    from hcbak.engine.state import load_history, parse_duration, rpo_overdue, save_history

    alerts = []
    for job in config.jobs.values():
        if not job.alert_after:
            continue
        history = load_history(sdir, job.name)
        if not rpo_overdue(history, job.alert_after, now):
            continue
        window = parse_duration(job.alert_after)
        if history.last_alert and now - history.last_alert < window:
            continue
        last = history.last_success.isoformat() if history.last_success else "never"
        message = (
            f"job {job.name} has no successful point for longer than {job.alert_after} "
            f"(last success: {last})"
        )
        alerts.append(message)
        warn(message)
        log.warning(message)
        if job.notify:
            subject = f"[hcbak] {job.name}: RPO ALERT"
            send_mail(config, job.notify.to, subject, message + "\n", warn)
        history.last_alert = now
        save_history(sdir, job.name, history)
    return alerts


def send_mail(config: Config, to: list[str], subject: str, body: str, warn: WarnFn) -> None:
    """A failed send is logged and shown, and does not change the exit code."""
    from hcbak.engine.notify import send_email

    if config.smtp is None:
        warn("email notification configured but no smtp server in the config; not sent")
        return
    try:
        send_email(config.smtp, to, subject, body)
        log.info("email sent to %s: %s", ", ".join(to), subject)
    except HcbakError as exc:
        warn(exc.one_line())
        log.error("%s", exc.one_line())


class RunLog:
    """The log file of one run (what happened, for later, not for the TTY)."""

    def __init__(self, path: Path, handler: logging.Handler, level: int) -> None:
        self.path = path
        self.handler = handler
        self.level = level  # the logger's level before the run: given back at close

    def close(self) -> None:
        logger = logging.getLogger("hcbak")
        logger.removeHandler(self.handler)
        logger.setLevel(self.level)
        self.handler.close()


def start_run_log(sdir: Path, warn: WarnFn) -> RunLog | None:
    """A log file per run in <state>/logs; None (with a warning) where none can be
    written: the run goes on without it."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = sdir / "logs" / f"run-{stamp}-{os.getpid()}.log"
    try:
        from hcbak.engine.state import make_state_dir
        from hcbak.repo.fsio import open_private

        make_state_dir(path.parent)
        os.close(open_private(path, os.O_WRONLY))  # 0600 before the handler appends to it
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError as exc:
        warn(f"cannot write the run log {path}: {exc.strerror}")
        return None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(message)s"))
    handler.setLevel(logging.INFO)
    logger = logging.getLogger("hcbak")
    logger.addHandler(handler)
    level = logger.level
    # INFO at least, for the file; never less than asked for: under --debug the root
    # logger is at DEBUG, and a logger of its own at INFO would hide those lines.
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    return RunLog(path, handler, level)
