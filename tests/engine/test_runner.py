"""engine/runner.py used directly, as the CLI uses it: plan, run, report, no terminal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from hcbak.engine.progress import ProgressEvent
from hcbak.engine.runner import RunRequest, plan_run, run_jobs
from hcbak.engine.state import load_history
from hcbak.errors import ExitCode

from .helpers import MiB, lab


class Recorder:
    """A display that keeps what it was told, and when it was open."""

    def __init__(self) -> None:
        self.events: list[ProgressEvent] = []
        self.open = False
        self.entered = 0

    def __enter__(self) -> Recorder:
        self.open, self.entered = True, self.entered + 1
        return self

    def __exit__(self, *exc: object) -> None:
        self.open = False

    def event(self, ev: ProgressEvent) -> None:
        assert self.open, "events come while the display is open"
        self.events.append(ev)


def test_a_planned_run_backs_up_records_the_run_and_reports_through_the_display(
    tmp_path: Path,
) -> None:
    with lab(tmp_path, schedule="0 3 1 1 *", alert_after="1h") as L:  # yearly: not due
        L.sim.create_vm("web01", [1 * MiB], tags=["nightly"])
        state = tmp_path / "state"
        display, warnings = Recorder(), list[str]()

        plan = plan_run(L.config, RunRequest(names=["nightly"]))
        report = run_jobs(plan, display, warnings.append)

        assert report.exit_code() == ExitCode.OK, report.to_dict()
        assert [vm.status for vm in report.jobs[0].vms] == ["ok"]
        assert display.entered == 1 and not display.open
        assert {"job_start", "vm_done"} <= {e.kind for e in display.events}
        history = load_history(state, "nightly")
        assert history.last_status == "ok" and history.last_success == report.jobs[0].started
        assert report.jobs[0].log_file and Path(report.jobs[0].log_file).is_file()
        assert warnings == []

        # Just ran: nothing is due a minute later, and the RPO watch finds it fresh.
        later = datetime.now(UTC) + timedelta(minutes=1)
        due = plan_run(L.config, RunRequest(due=True), now=later)
        assert due.jobs == []
        assert run_jobs(due, Recorder(), warnings.append).alerts == []
