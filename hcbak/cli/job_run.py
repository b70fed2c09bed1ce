"""`hcbak job run`: run backup jobs now, or those whose schedule is due (cron).

The engine runs the jobs (engine/runner.py: which are due, run history, the RPO watch,
mail, the run log); this module parses, calls, prints and exits. Progress goes to
stderr: a rich live view on a TTY, one timestamped line per VM event otherwise (cron
mail stays readable). stdout carries the result: a summary table, or the run report
with --json (schema: docs/run-report.md). The exit code follows docs/exit-codes.md.
"""

import sys
from typing import TYPE_CHECKING, Annotated

from hcbak.cli.common import load_config
from hcbak.cli.output import emit_json, info, is_tty, print_table, warn
from hcbak.errors import ExitCode, UsageError

if TYPE_CHECKING:
    import typer

    from hcbak.engine.progress import Display, ProgressEvent
    from hcbak.engine.report import RunReport


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
    """Parse, call the engine's runner (engine/runner.py), print, return the exit code."""
    from hcbak.engine.runner import RunRequest, plan_run
    from hcbak.engine.runner import run_jobs as run_planned

    if sum([bool(names), all_jobs, due]) != 1:
        raise UsageError("name one or more jobs, or use --all or --due (exactly one of them)")
    request = RunRequest(
        names=list(names),
        all_jobs=all_jobs,
        due=due,
        dry_run=dry_run,
        full=full,
        parallel=parallel,
        raise_locked_alone=not json_out,
    )
    plan = plan_run(load_config(), request)
    if due and not plan.jobs and not json_out:
        info("no job is due")
    display: Display = PlainDisplay()
    if is_tty(sys.stderr) and not json_out:
        from hcbak.cli.live import LiveDisplay  # rich.progress is slow to import: TTY only

        display = LiveDisplay()
    report = run_planned(plan, display, warn)
    if json_out:
        emit_json(report.to_dict())
    else:
        _print_summary(report)
    for line in _error_lines(report):
        sys.stderr.write(f"error: {line}\n")
    return report.exit_code()


def _error_lines(report: "RunReport") -> list[str]:
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


def _print_summary(report: "RunReport") -> None:
    """Each job's one-line summary first, then one row per VM, failures first."""
    from hcbak.engine.report import human_bytes, summary_line, vm_status_word, vms_failures_first

    rows = []
    for job in report.jobs:
        if job.vms:
            sys.stdout.write(f"{job.job}: {summary_line(job)}\n")
    for job in report.jobs:
        for vm in vms_failures_first(job.vms):
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

    def event(self, ev: "ProgressEvent") -> None:
        if ev.kind != "disk_progress":
            info(ev.line())
