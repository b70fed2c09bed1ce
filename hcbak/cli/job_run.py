"""`hcbak job run`: run backup jobs now, or those whose schedule is due (cron).

Progress goes to stderr: a rich live view on a TTY, one timestamped line per VM event
otherwise (cron mail stays readable). stdout carries the result: a summary table, or
the run report with --json (schema: docs/run-report.md). Every run also writes a log
file under <state dir>/logs/. The exit code follows docs/exit-codes.md.
"""

import logging
import os
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from hcbak.cli.common import load_config
from hcbak.cli.output import emit_json, info, is_tty, print_table, warn
from hcbak.engine.copy_to import copy_after_job
from hcbak.errors import ExitCode, HcbakError, LockedError, UsageError

if TYPE_CHECKING:
    import typer


def register(app: "typer.Typer") -> None:
    """Add the `run` command to the `job` group.

    Typer loads here, not with the module: `hcbak job run` usually runs without it
    (hcbak/cli/entry.py), calling `run_jobs` directly.
    """
    import typer

    @app.command("run")
    def run(
        names: Annotated[list[str] | None, typer.Argument(help="Jobs to run.")] = None,
        all_jobs: Annotated[bool, typer.Option("--all", help="Run every job.")] = False,
        due: Annotated[
            bool,
            typer.Option(
                "--due",
                help="Run the jobs whose schedule came due since their last run, and alert "
                "on jobs without a successful point for longer than alert_after. Meant for "
                "one crontab line: */15 * * * * hcbak job run --due",
            ),
        ] = False,
        json_out: Annotated[bool, typer.Option("--json", help="Print the run report.")] = False,
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="Show what would be backed up; change nothing.")
        ] = False,
        full: Annotated[
            bool, typer.Option("--full", help="Read every disk in full (no snapDiff).")
        ] = False,
        parallel: Annotated[
            int | None, typer.Option("--parallel", min=1, help="VMs backed up at once.")
        ] = None,
    ) -> None:
        """Back up the VMs of one or more jobs now.

        Exit codes: 0 ok, 1 warnings, 3 some VMs failed, 4 nothing backed up, 5 the job
        is already running, 130 interrupted (the report is still printed and mailed).
        """
        code = run_jobs(
            names or [],
            all_jobs=all_jobs,
            due=due,
            json_out=json_out,
            dry_run=dry_run,
            full=full,
            parallel=parallel,
        )
        raise typer.Exit(int(code))


def run_jobs(
    names: list[str],
    *,
    all_jobs: bool = False,
    due: bool = False,
    json_out: bool = False,
    dry_run: bool = False,
    full: bool = False,
    parallel: int | None = None,
) -> ExitCode:
    from hcbak.config import state_dir
    from hcbak.engine.report import RunReport, utcnow

    if sum([bool(names), all_jobs, due]) != 1:
        raise UsageError("name one or more jobs, or use --all or --due (exactly one of them)")
    config = load_config()
    sdir = state_dir(config)
    now = datetime.now(UTC)
    if due:
        jobs = _due_jobs(config, sdir, now)
        if not jobs and not json_out:
            info("no job is due")
    elif all_jobs:
        jobs = list(config.jobs.values())
        if not jobs:
            raise UsageError("no jobs configured", hint="hcbak job create NAME ...")
    else:
        jobs = [config.job(name) for name in dict.fromkeys(names)]
    if jobs:
        from hcbak.engine.background import derive_repository_key_early

        derive_repository_key_early(config, jobs[0])
    report = RunReport()
    log_file = _start_log(sdir)
    previous = _sigterm_as_interrupt()
    display: Any = PlainDisplay()
    if is_tty(sys.stderr) and not json_out:
        from hcbak.cli.live import LiveDisplay  # rich.progress is slow to import: TTY only

        display = LiveDisplay()
    try:
        with display:
            for job in jobs:
                # One job named, no report asked for: "already running" is the whole story.
                single = len(jobs) == 1 and not json_out
                job_report = _run_one(
                    config, job, sdir, display, dry_run, full, parallel, single=single
                )
                job_report.log_file = str(log_file.path) if log_file else None
                copy_after_job(config, job, job_report, sdir, display.event)  # copy_to
                report.jobs.append(job_report)
                _after_job(config, sdir, job, job_report)
                if job_report.status == "interrupted":
                    break  # the jobs after it do not start
        if due and not any(j.status == "interrupted" for j in report.jobs):
            report.alerts = _rpo_watch(config, sdir, now)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if log_file:
            log_file.close()
    report.finished = utcnow()
    if json_out:
        emit_json(report.to_dict())
    else:
        _print_summary(report)
    for line in _error_lines(report):
        sys.stderr.write(f"error: {line}\n")
    return report.exit_code()


def _error_lines(report: Any) -> list[str]:
    """One line per failed job for stderr, so cron mail and scripts see why even with
    --json (docs/exit-codes.md: every failure exit names its reason on stderr)."""
    from hcbak.engine.report import VM_FAILED

    lines = []
    for job in report.jobs:
        if job.status == "locked":
            lines.append(job.reason)
            continue
        if job.status == "failed":
            lines.append(f"job {job.job} failed: {job.reason}")
            continue
        if job.status == "interrupted":
            reason = job.reason.removeprefix("interrupted").lstrip(": ")
            lines.append(f"job {job.job} interrupted" + (f": {reason}" if reason else ""))
            continue
        failed = [vm for vm in job.vms if vm.status == VM_FAILED]
        if failed:
            shown = "; ".join(f"{vm.name}: {vm.reason}" for vm in failed[:3])
            more = f"; and {len(failed) - 3} more" if len(failed) > 3 else ""
            lines.append(
                f"job {job.job}: {len(failed)} of {len(job.vms)} VM(s) failed: {shown}{more}"
            )
    return [" ".join(line.split()) for line in lines]


def _run_one(
    config: Any,
    job: Any,
    sdir: Path,
    display: Any,
    dry_run: bool,
    full: bool,
    parallel: int | None,
    *,
    single: bool,
) -> Any:
    from hcbak.engine.backup import run_job
    from hcbak.engine.report import JobReport, utcnow

    try:
        return run_job(
            config,
            job,
            full=full,
            parallel=parallel,
            dry_run=dry_run,
            progress=display.event,
            state_dir=sdir,
        )
    except LockedError as exc:
        if single:
            raise
        locked = JobReport(job.name, job.cluster, job.repo, dry_run=dry_run, full=full)
        locked.status, locked.reason, locked.finished = "locked", exc.one_line(), utcnow()
        return locked  # its error line comes with the others at the end
    except KeyboardInterrupt:  # outside the engine's own handling (the job lock)
        return _ended(job, dry_run, full, "interrupted", ExitCode.INTERRUPTED, "")
    except HcbakError as exc:  # e.g. a state dir where the job lock cannot be written
        return _ended(job, dry_run, full, "failed", exc.exit_code, exc.one_line())
    except OSError as exc:
        from hcbak.errors import describe_os_error

        return _ended(job, dry_run, full, "failed", ExitCode.FAILED, describe_os_error(exc))


def _ended(job: Any, dry_run: bool, full: bool, status: str, code: ExitCode, reason: str) -> Any:
    """The report of a job that ended outside the engine: it still gets its email,
    its record and its line in the report."""
    from hcbak.engine.report import JobReport, utcnow

    ended = JobReport(job.name, job.cluster, job.repo, dry_run=dry_run, full=full)
    ended.status, ended.reason, ended.finished = status, reason, utcnow()
    ended.error_code = code
    return ended


def _sigterm_as_interrupt() -> Any:
    """SIGTERM (systemd stop, kill) cleans up like Ctrl-C: snapshots and clones of
    unfinished VMs are removed, the report printed and mailed, the run recorded, before
    exit 130. Returns the previous handler."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (embedded use): leave signals alone
        return None


def _due_jobs(config: Any, sdir: Path, now: datetime) -> list[Any]:
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


def _after_job(config: Any, sdir: Path, job: Any, job_report: Any) -> None:
    """Record the run for --due / the RPO watch, then mail the report if asked to."""
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
        _send(config, job.notify.to, render_subject(job_report), render_body(job_report))


def _rpo_watch(config: Any, sdir: Path, now: datetime) -> list[str]:
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
        logging.getLogger("hcbak.engine").warning(message)
        if job.notify:
            _send(config, job.notify.to, f"[hcbak] {job.name}: RPO ALERT", message + "\n")
        history.last_alert = now
        save_history(sdir, job.name, history)
    return alerts


def _send(config: Any, to: list[str], subject: str, body: str) -> None:
    """A failed send is logged and shown, and does not change the exit code."""
    from hcbak.engine.notify import send_email

    log = logging.getLogger("hcbak.engine")
    if config.smtp is None:
        warn("email notification configured but no smtp server in the config; not sent")
        return
    try:
        send_email(config.smtp, to, subject, body)
        log.info("email sent to %s: %s", ", ".join(to), subject)
    except HcbakError as exc:
        warn(exc.one_line())
        log.error("%s", exc.one_line())


class _RunLog:
    def __init__(self, path: Path, handler: logging.Handler, level: int) -> None:
        self.path = path
        self.handler = handler
        self.level = level  # the logger's level before the run: given back at close

    def close(self) -> None:
        logger = logging.getLogger("hcbak")
        logger.removeHandler(self.handler)
        logger.setLevel(self.level)
        self.handler.close()


def _start_log(sdir: Path) -> "_RunLog | None":
    """A log file per run in <state>/logs (what happened, for later, not for the TTY)."""
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
    return _RunLog(path, handler, level)


def _print_summary(report: Any) -> None:
    from hcbak.engine.report import human_bytes, vm_status_word

    rows = []
    for job in report.jobs:
        for vm in job.vms:
            t = vm.totals()
            cbt = ",".join(sorted({d.cbt_reason for d in vm.disks})) or "-"
            rows.append(
                [
                    job.job,
                    vm.name,
                    vm_status_word(vm),
                    cbt,
                    human_bytes(t["bytes_read"]),
                    human_bytes(t["bytes_stored"]),
                    vm.point_id or vm.reason,
                ]
            )
        if not job.vms and job.reason:
            rows.append([job.job, "-", job.status, "-", "-", "-", job.reason])
    if rows:
        columns = ["JOB", "VM", "STATUS", "CBT", "READ", "STORED", "POINT/REASON"]
        print_table(columns, rows, whole=["POINT/REASON"])


# --- progress display -------------------------------------------------------------------
class PlainDisplay:
    """One timestamped line per VM event on stderr (no per-block noise)."""

    def __enter__(self) -> "PlainDisplay":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def event(self, ev: Any) -> None:
        if ev.kind != "disk_progress":
            info(ev.line())
