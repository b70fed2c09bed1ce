"""A job of many VMs (issue 21): the API calls per VM stay flat, the mail and the
summary start with the counts and list the failures before the successes, the plain
log stays one line per event, the live view shows the running VMs and counts.

60 VMs against the real simulator, a real `hcbak job run` subprocess and a real
aiosmtpd server; the 200-VM measurements are benchmarks/vms.py (RESULTS.md).
"""

from __future__ import annotations

import io
import re
from pathlib import Path

from harness import RunHcbak, assert_no_traceback

from hcbak.config import EmailNotify, SMTPConfig, save_config
from hcbak.engine.progress import ProgressEvent

from .helpers import MiB, lab
from .smtp_server import smtp_server

N_VMS = 60


def test_a_60_vm_job_mails_its_summary_first_and_failures_before_successes(
    tmp_path: Path, run_hcbak: RunHcbak
) -> None:
    with lab(tmp_path, nodes=1) as L, smtp_server() as inbox:
        uuids = {}
        for i in range(N_VMS):
            vm = uuids[i] = L.sim.create_vm(f"vm{i:02d}", [1 * MiB], tags=["nightly"])
            L.sim.write(L.sim.disk_uuids(vm)[0], 0, bytes([i + 1]) * 4096)
        # One VM fails (its snapshot task ends in ERROR), one warns (a disk that
        # cannot be snapshotted is skipped); both sit in the middle of the run order.
        L.sim.faults.fail_snapshot(uuids[41])
        warned = L.sim.create_vm("vm30x", [1 * MiB, 1 * MiB], tags=["nightly"])
        L.sim.set_disable_snapshotting(L.sim.disk_uuids(warned)[1])
        L.config.smtp = SMTPConfig(
            host=inbox.host, port=inbox.port, security="none", sender="hcbak@example.com"
        )
        L.config.jobs["nightly"].notify = EmailNotify(to=["ops@example.com"], on=["failure"])
        save_config(L.config)
        L.sim.requests.clear()
        proc = run_hcbak("job", "run", "nightly", "--parallel", "4", env=L.env)
        snapshot_lists = sum(
            1 for _n, method, path, _b in L.sim.requests if (method, path) == _LIST_SNAPSHOTS
        )
        calls = len(L.sim.requests)
    assert proc.returncode == 3, proc.stderr  # partial: one VM failed
    assert_no_traceback(proc)
    n = N_VMS + 1
    # Every snapshot of the cluster is listed once per run, not once per VM (it was
    # 2 per VM: a look for the fresh label, and the new snapshot found in the list).
    assert snapshot_lists == 1, snapshot_lists
    assert calls / n < 16, calls / n

    (msg,) = inbox.messages
    body = msg.get_payload(decode=True).decode().replace("\r\n", "\n")
    lines = body.splitlines()
    assert lines[0].startswith(f"Summary:  {n} VMs: {n - 2} ok, 1 warning, 1 failed; read ")
    assert body.index("Failed (1):\n  - vm41: ") < body.index("\nvm00 ")
    table = lines[next(i for i, line in enumerate(lines) if line.startswith("VM ")) + 1 :]
    assert table[0].startswith("vm41 ") and " failed " in table[0]
    assert table[1].startswith("vm30x ") and " warning " in table[1]
    assert all(" ok " in row for row in table[2:n])

    # stdout: the summary line before the table, whose rows are failures first
    out = proc.stdout.splitlines()
    assert out[0].startswith(f"nightly: {n} VMs: {n - 2} ok, 1 warning, 1 failed; read ")
    assert out[2].split("\t")[1:3] == ["vm41", "failed"]
    assert out[3].split("\t")[1:3] == ["vm30x", "warning"]
    # the plain log: one timestamped line per event, a handful per VM
    log = [line for line in proc.stderr.splitlines() if not line.startswith("error: ")]
    assert all(re.match(r"^\d{4}-\d\d-\d\dT", line) for line in log), log[:3]
    assert len(log) <= 5 * n + 10, len(log)


_LIST_SNAPSHOTS = ("GET", "/rest/v1/VirDomainSnapshot")


def test_the_live_view_shows_the_running_vms_and_counts_not_a_row_per_vm() -> None:
    """200 VMs through the live view (its rich Progress, rendered to a buffer): what
    stays on screen is a line of counts and the bars of the disks being read."""
    from rich.console import Console

    from hcbak.cli.live import LiveDisplay

    live = LiveDisplay(Console(file=io.StringIO(), width=120, force_terminal=False))

    def ev(kind: str, vm: str | None = None, message: str = "", **kw: int) -> None:
        disk = "slot 0" if kind.startswith("disk") else None
        live.event(ProgressEvent(kind, "fleet", vm, disk, message, **kw))

    ev("job_start", message="cluster c, repo r")
    for i in range(200):
        vm = f"vm{i:03d}"
        ev("vm_start", vm)
        ev("disk_start", vm, "full", total=MiB)
        ev("disk_progress", vm, done=MiB)
        if i >= 196:
            continue  # still running: its bar stays
        ev("disk_done", vm)
        if i == 7:
            ev("warning", vm, "disk slot 1: snapshots disabled on this disk")
        ev("vm_done", vm, "failed: snapshot task ERROR" if i == 3 else f"point p{i}")
    assert live.header() == "fleet: 4 running, 194 ok, 1 warning, 1 failed"
    screen = Console(file=io.StringIO(), width=120)
    screen.print(*live.progress.get_renderables())
    shown = screen.file.getvalue().splitlines()  # type: ignore[attr-defined]
    assert shown[0] == live.header()
    assert [line.split()[0] for line in shown[1:]] == ["vm196", "vm197", "vm198", "vm199"]
    printed = live.console.file.getvalue()  # type: ignore[attr-defined]
    assert "fleet/vm003: failed: snapshot task ERROR" in printed
    assert "fleet/vm007: warning: disk slot 1" in printed
    assert "point p10" not in printed  # successes are counted, not listed
