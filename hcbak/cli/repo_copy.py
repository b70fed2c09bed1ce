"""`hcbak repo copy SRC DST`: copy the points DST lacks, and only the blocks it lacks.

The work is engine/copy.py's; this module parses the filters, shows progress on stderr
(a rich bar per point on a TTY, one timestamped line per point otherwise), prints the
result (a table, or the report with --json) and maps it to the exit codes of `job run`.
"""

import re
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

from hcbak.cli.byte_bars import byte_bars
from hcbak.cli.common import load_config
from hcbak.cli.output import emit_json, info, is_tty, print_table, warn
from hcbak.errors import UsageError

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType

    import typer
    from rich.progress import TaskID

    from hcbak.engine.copy import CopyEvent, CopyProgress, CopyReport

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")


def register(app: "typer.Typer") -> None:
    """Add `copy` to the `repo` group."""
    import typer

    @app.command("copy")
    def copy(
        src: Annotated[
            str, typer.Argument(metavar="SRC", help="Repository to copy from (its name).")
        ],
        dst: Annotated[
            str, typer.Argument(metavar="DST", help="Repository to copy to (its name).")
        ],
        job: Annotated[
            list[str] | None, typer.Option("--job", help="Only points of this job (repeatable).")
        ] = None,
        vm: Annotated[
            list[str] | None,
            typer.Option("--vm", help="Only points of this VM, by name or uuid (repeatable)."),
        ] = None,
        since: Annotated[
            str | None,
            typer.Option(
                "--since",
                metavar="DATE|DURATION",
                help="Only points created since then: 2026-11-30, 2026-11-30T18:00, or a "
                "duration back from now (36h, 7d).",
            ),
        ] = None,
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="List what would be copied; write nothing.")
        ] = False,
        wait: Annotated[float, typer.Option(help="Seconds to wait for other locks.")] = 0.0,
        json_out: Annotated[bool, typer.Option("--json", help="Print the copy report.")] = False,
    ) -> None:
        """Copy the restore points DST lacks from SRC to DST (e.g. offsite).

        Only blocks DST lacks are sent; blocks are re-encrypted (and re-identified) for
        DST's keys. Each point is committed in DST only after all its blocks are durable
        there and checked. Exit codes: 0 ok (or nothing to copy), 1 warnings, 3 some
        points failed, 4 nothing copied, 5 a repository is locked, 6 damage (a damaged
        block in SRC fails its point), 130 interrupted.
        """
        code = run_copy(
            src, dst, job or [], vm or [], since, dry_run=dry_run, wait=wait, json_out=json_out
        )
        raise typer.Exit(code)


def run_copy(
    src: str,
    dst: str,
    jobs: list[str],
    vms: list[str],
    since: str | None,
    *,
    dry_run: bool,
    wait: float,
    json_out: bool,
) -> int:
    from hcbak.config import state_dir
    from hcbak.engine.copy import CopySelection, copy_between

    selection = CopySelection(
        jobs=tuple(jobs), vms=tuple(vms), since=parse_since(since, datetime.now(UTC))
    )
    config = load_config()
    for name in (src, dst):
        config.repo(name)  # an unknown name: exit 2 before anything opens
    previous = _sigterm_as_interrupt()  # SIGTERM stops as Ctrl-C does: report, exit 130
    try:
        with _display(quiet=json_out) as progress:
            report = copy_between(
                config,
                src,
                dst,
                selection,
                progress,
                dry_run=dry_run,
                state_dir=state_dir(config),
                lock_wait=wait,
            )
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if json_out:
        emit_json(report.to_json())
    else:
        _print_result(report)
    for line in error_lines(report):
        sys.stderr.write(f"error: {line}\n")
    return int(report.exit_code())


def _sigterm_as_interrupt() -> "Callable[[int, FrameType | None], Any] | int | None":
    """SIGTERM (systemd stop, kill) stops the copy as Ctrl-C does: the point in flight
    is not committed, the report is printed, exit 130. Returns the previous handler."""

    def handler(signum: int, frame: "FrameType | None") -> None:
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (embedded use): leave signals alone
        return None


def parse_since(text: str | None, now: datetime) -> datetime | None:
    """`--since`: a date (local midnight), a date and time (local unless it has an
    offset), or a duration back from `now`."""
    if text is None:
        return None
    if _DATE.match(text.strip()):
        try:
            when = datetime.fromisoformat(text.strip())
        except ValueError:
            raise UsageError(f"--since {text!r}: use YYYY-MM-DD[THH:MM] or a duration (7d)")
        return when if when.tzinfo else when.astimezone()
    from hcbak.schedule import parse_duration

    try:
        back: timedelta = parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"--since: {exc}") from None
    return now - back


def error_lines(report: "CopyReport") -> list[str]:
    """One line per failed point (or for the whole copy), naming it, for stderr."""
    if report.status == "interrupted":
        done = len(report.of("copied"))
        return [f"copy from {report.src} to {report.dst} interrupted after {done} point(s)"]
    if report.status:
        return [f"copy from {report.src} to {report.dst} {report.status}: {report.reason}"]
    return [
        f"point {p.id} ({p.vm_name} {p.created:%Y-%m-%d %H:%M}) not copied: {p.reason}"
        for p in report.points
        if p.status == "failed"
    ]


def _print_result(report: "CopyReport") -> None:
    from hcbak.engine.report import human_bytes

    for message in report.warnings:
        warn(message)
    rows = [
        [
            p.id[:12],
            p.job,
            p.vm_name,
            p.created.astimezone().strftime("%Y-%m-%d %H:%M"),
            p.status,
            f"{p.blocks_sent}/{p.blocks}",
            human_bytes(p.bytes_sent),
            p.reason,
        ]
        for p in report.points
    ]
    if rows:
        print_table(["ID", "JOB", "VM", "CREATED", "STATUS", "SENT", "STORED", "REASON"], rows)
    info(report.summary() if not report.dry_run else _dry_summary(report))


def _dry_summary(report: "CopyReport") -> str:
    planned = len(report.of("planned"))
    present = len(report.of("present"))
    return f"dry run: {planned} point(s) to copy to {report.dst}, {present} already there"


@contextmanager
def _display(*, quiet: bool) -> "Iterator[CopyProgress]":
    """Progress on stderr: a bar per point on a TTY, a line per point otherwise."""
    if quiet:
        yield lambda _event: None
        return
    if not is_tty(sys.stderr):
        yield _plain_line
        return
    bars: dict[str, tuple[TaskID, int]] = {}
    with byte_bars() as bar:

        def update(event: "CopyEvent") -> None:
            p = event.point
            if event.kind == "warning":
                bar.console.print(f"warning: {event.message}", markup=False)
            if p is None:
                return
            if event.kind == "point_start":
                label = f"{p.vm_name} {p.created:%Y-%m-%d %H:%M} {p.id[:8]}"
                bars[p.id] = (bar.add_task(label, total=max(event.total, 1)), max(event.total, 1))
            elif event.kind == "point_progress" and p.id in bars:
                bar.update(bars[p.id][0], completed=event.done)
            elif event.kind == "point_done" and p.id in bars:
                task, total = bars[p.id]
                label = f"{p.vm_name} {p.created:%Y-%m-%d %H:%M} {p.id[:8]} {p.status}"
                bar.update(task, completed=total, description=label)

        yield update


def _plain_line(event: "CopyEvent") -> None:
    p = event.point
    if event.kind == "warning":
        warn(event.message)
    elif p is None or event.kind == "point_progress":
        return
    elif event.kind == "point_start":
        info(f"copying point {p.id} ({p.vm_name} {p.created:%Y-%m-%d %H:%M})")
    elif event.kind == "point_present":
        info(f"point {p.id} ({p.vm_name}) is already there")
    elif event.kind == "point_done" and p.status == "copied":
        info(
            f"copied point {p.id}: {p.blocks_sent} of {p.blocks} blocks sent, "
            f"{p.blocks_verified} read back"
        )
    elif event.kind == "point_done":
        info(f"point {p.id} failed: {p.reason}")
