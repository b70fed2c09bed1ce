"""`hcbak job run` / `hcbak notify test` as real subprocesses against the simulator."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from harness import HCBAK, RunHcbak, assert_no_traceback

from hcbak.cli.sim import sim_cluster_config
from hcbak.config import EmailNotify, SMTPConfig, save_config

from .helpers import MiB, lab
from .smtp_server import smtp_server

DOCS = Path(__file__).resolve().parents[2] / "docs" / "run-report.md"


def _schema() -> dict[str, Any]:
    text = DOCS.read_text(encoding="utf-8")
    block = re.search(r"## Schema.*?```json\n(.*?)```", text, re.S)
    assert block, "docs/run-report.md has no JSON schema block"
    return json.loads(block.group(1))


def _validate(value: Any, schema: dict[str, Any], where: str = "$") -> None:
    """The subset of JSON Schema the documented schema uses (no dependency needed)."""
    types = schema.get("type")
    if types is not None:
        names = types if isinstance(types, list) else [types]
        pytypes = {
            "object": dict,
            "array": list,
            "string": str,
            "boolean": bool,
            "null": type(None),
            "integer": int,
            "number": (int, float),
        }
        ok = any(
            isinstance(value, pytypes[n])
            and not (n in ("integer", "number") and isinstance(value, bool))
            for n in names
        )
        assert ok, f"{where}: {value!r} is not {types}"
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
    if isinstance(value, dict):
        for key in schema.get("required", []):
            assert key in value, f"{where}: missing {key}"
        props = schema.get("properties", {})
        for key, item in value.items():
            if key in props:
                _validate(item, props[key], f"{where}.{key}")
            elif isinstance(schema.get("additionalProperties"), dict):
                _validate(item, schema["additionalProperties"], f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            _validate(item, schema["items"], f"{where}[{i}]")


def test_json_report_matches_documented_schema_and_counts_changed_blocks(
    tmp_path: Path, run_hcbak: RunHcbak
) -> None:
    with lab(tmp_path) as L:
        vm = L.sim.create_vm("web01", [4 * MiB], tags=["nightly"])
        disk = L.sim.disk_uuids(vm)[0]
        L.sim.fill(disk, seed=2)
        first = run_hcbak("job", "run", "nightly", "--json", env=L.env)
        assert first.returncode == 0, first.stderr
        _validate(json.loads(first.stdout), _schema())
        L.sim.write(disk, 1 * MiB + 100, b"z" * 10)
        second = run_hcbak("job", "run", "nightly", "--json", env=L.env)
        assert second.returncode == 0, second.stderr
        report = json.loads(second.stdout)
        _validate(report, _schema())
        (d,) = report["jobs"][0]["vms"][0]["disks"]
        assert (d["cbt_used"], d["blocks_read"], d["blocks_new"]) == (True, 1, 1)
        # not a TTY: plain timestamped lines per VM event on stderr, and a run log file
        assert re.search(
            r"^\d{4}-\d\d-\d\dT.* nightly/web01: finished: point ", second.stderr, re.M
        )
        assert Path(report["jobs"][0]["log_file"]).is_file()
        assert_no_traceback(second)


def test_failed_vm_gives_exit_3_and_email_arrives_with_status_subject(
    tmp_path: Path, run_hcbak: RunHcbak
) -> None:
    with lab(tmp_path) as L, smtp_server() as inbox:
        L.sim.create_vm("good01", [1 * MiB], tags=["nightly"])
        bad = L.sim.create_vm("bad01", [1 * MiB], tags=["nightly"])
        L.sim.faults.fail_snapshot(bad)
        L.config.smtp = SMTPConfig(
            host=inbox.host, port=inbox.port, security="none", sender="hcbak@example.com"
        )
        L.config.jobs["nightly"].notify = EmailNotify(to=["ops@example.com"], on=["failure"])
        save_config(L.config)
        proc = run_hcbak("job", "run", "nightly", env=L.env)
        assert proc.returncode == 3, proc.stderr
        assert_no_traceback(proc)
        assert "bad01" in proc.stdout and "failed" in proc.stdout
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "job nightly: 1 of 2 VM(s) failed: bad01:" in errors[0]
    (msg,) = inbox.messages
    assert msg["Subject"].startswith("[hcbak] nightly: PARTIAL - 1/2 VMs backed up")


def test_failing_pre_hook_skips_the_job_with_exit_4(tmp_path: Path, run_hcbak: RunHcbak) -> None:
    with lab(tmp_path, pre_hook="echo app not quiesced >&2; exit 2") as L:
        vm = L.sim.create_vm("web01", [1 * MiB], tags=["nightly"])
        proc = run_hcbak("job", "run", "nightly", "--json", env=L.env)
        assert proc.returncode == 4
        job = json.loads(proc.stdout)["jobs"][0]
        assert "pre-hook exited with status 2" in job["reason"]
        # --json keeps stdout for the report; the reason still reaches stderr in one line.
        assert re.search(
            r"^error: job nightly failed: .*pre-hook exited with status 2", proc.stderr, re.M
        )
        assert L.sim.snapshots(vm) == []


HOLD = """
import sys, time
from pathlib import Path
from hcbak.engine.state import JobLock
JobLock(Path(sys.argv[1]), "nightly").acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_running_job_gives_exit_5_naming_the_holder(tmp_path: Path, run_hcbak: RunHcbak) -> None:
    with lab(tmp_path) as L:
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(tmp_path / "state")], stdout=subprocess.PIPE, text=True
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
            proc = run_hcbak("job", "run", "nightly", env=L.env)
            as_json = run_hcbak("job", "run", "nightly", "--json", env=L.env)
        finally:
            holder.kill()
            holder.wait()
        assert proc.returncode == 5
        assert f"pid {holder.pid}" in proc.stderr
        assert_no_traceback(proc)
        # --json: the report is complete for every exit code (docs/exit-codes.md).
        assert as_json.returncode == 5
        assert f"pid {holder.pid}" in as_json.stderr
        report = json.loads(as_json.stdout)
        _validate(report, _schema())
        (job,) = report["jobs"]
        assert (report["status"], job["status"], job["exit_code"]) == ("locked", "locked", 5)
        assert f"pid {holder.pid}" in job["reason"]


def _kill_job_run(
    L: Any, env: dict[str, str], journal: Path, *, task_delay: float, after: float
) -> None:
    """SIGKILL `hcbak job run nightly` `after` seconds after its first entry in `journal`."""
    L.sim.faults.task_delay(task_delay)
    proc = subprocess.Popen(
        [*HCBAK, "job", "run", "nightly"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not list(journal.glob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(after)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


# When to kill: after the first clone journal entry appears (the pending one, written
# just before the clone request) plus a delay. The clone task and its removal take 0.4 s
# each here, so 0.1 s lands in the clone task and 0.55 s while the clone is attached.
@pytest.mark.parametrize("delay", [0.1, 0.55], ids=["clone-task", "attached"])
def test_kill_9_mid_run_then_next_run_cleans_orphans_and_succeeds(
    tmp_path: Path, run_hcbak: RunHcbak, hcbak_env: dict[str, str], delay: float
) -> None:
    with lab(tmp_path) as L:
        vm = L.sim.create_vm("web01", [2 * MiB], tags=["nightly"])
        L.sim.fill(L.sim.disk_uuids(vm)[0], seed=4)
        journal = tmp_path / "state" / "clones"
        # slow tasks: the kill lands in the clone task or while the clone is attached
        _kill_job_run(L, {**hcbak_env, **L.env}, journal, task_delay=0.4, after=delay)
        assert list(journal.glob("*.json")), "the run was killed before it attached a clone"
        L.sim.faults.task_delay(0.005)
        L.sim.wait_idle()  # tasks the dead run started still finish on the cluster
        clones = L.worker_clones()
        # the killed run's snapshot (uncommitted) and, when killed in the clone task, its clone
        assert len(L.hcbak_snapshots(vm)) == 1
        assert clones or delay > 0.4
        again = run_hcbak("job", "run", "nightly", "--json", env=L.env)
        assert again.returncode == 0, again.stderr
        point = json.loads(again.stdout)["jobs"][0]["vms"][0]
        assert [s["uuid"] for s in L.hcbak_snapshots(vm)] == [point["snapshot_uuid"]]
        assert not L.worker_clones()
        assert not list(journal.glob("*.json"))


@pytest.mark.parametrize("folder", ["tasks", "clones"], ids=["snapshot-task", "clone-task"])
def test_a_run_killed_in_a_task_leaves_nothing_when_the_next_run_comes_first(
    tmp_path: Path, run_hcbak: RunHcbak, hcbak_env: dict[str, str], folder: str
) -> None:
    """Found by the SIGKILL test: a snapshot or clone appears only when its task is done.
    A run killed during that task, followed at once by the next run (cron, a retry),
    left it behind: the next run looked before it existed (and forgot the clone for
    good). The next run must wait for the dead run's task, then remove what it made."""
    with lab(tmp_path) as L:
        vm = L.sim.create_vm("web01", [2 * MiB], tags=["nightly"])
        L.sim.fill(L.sim.disk_uuids(vm)[0], seed=4)
        journal = tmp_path / "state" / folder  # written as the task starts
        _kill_job_run(L, {**hcbak_env, **L.env}, journal, task_delay=1.0, after=0.2)
        assert list(journal.glob("*.json")), "the kill did not land in the task"
        assert not L.worker_clones(), "the clone exists already"
        if folder == "tasks":
            assert not L.hcbak_snapshots(vm), "the snapshot exists already"
        L.sim.faults.task_delay(0.005)
        again = run_hcbak("job", "run", "nightly", "--json", env=L.env)  # no wait_idle
        assert again.returncode == 0, again.stderr
        L.sim.wait_idle()
        point = json.loads(again.stdout)["jobs"][0]["vms"][0]
        assert [s["uuid"] for s in L.hcbak_snapshots(vm)] == [point["snapshot_uuid"]]
        assert not L.worker_clones()
        assert not list(journal.glob("*.json"))


def test_a_run_killed_before_its_clone_call_was_answered_leaves_no_clone(
    tmp_path: Path, run_hcbak: RunHcbak, hcbak_env: dict[str, str]
) -> None:
    """Found by the SIGKILL test under load: killed while the clone call was in flight,
    a run knows only that it asked (its "pending" journal entry), not the clone's uuid
    or task. The clone appears on the worker when the cluster's task ends; a next run
    that looked before then forgot the entry, and the clone stayed for good. It must
    wait (bounded) for what a recent pending call made, then remove it."""
    with lab(tmp_path) as L:
        vm = L.sim.create_vm("web01", [2 * MiB], tags=["nightly"])
        L.sim.fill(L.sim.disk_uuids(vm)[0], seed=4)
        journal = tmp_path / "state" / "clones"
        L.sim.faults.slow_answer(5.0, "POST", "/clone")  # carried out, answered late
        _kill_job_run(L, {**hcbak_env, **L.env}, journal, task_delay=1.0, after=0.3)
        [entry] = [json.loads(p.read_text()) for p in journal.glob("*.json")]
        assert entry.get("pending"), "the kill did not land while the clone call was open"
        assert not L.worker_clones(), "the clone exists already"
        L.sim.faults.clear()
        again = run_hcbak("job", "run", "nightly", "--json", env=L.env)  # no wait_idle
        assert again.returncode == 0, again.stderr
        L.sim.wait_idle()
        assert not L.worker_clones()
        assert not list(journal.glob("*.json"))


def test_a_dead_runs_clone_is_removed_even_when_the_repository_cannot_open(
    tmp_path: Path, run_hcbak: RunHcbak, hcbak_env: dict[str, str]
) -> None:
    """Orphan clones need only the cluster and the state dir, so they are removed while
    the repository opens: a run that then fails on the repository (moved, locked, a
    wrong passphrase) still frees the worker of what a dead run attached."""
    with lab(tmp_path) as L:
        vm = L.sim.create_vm("web01", [2 * MiB], tags=["nightly"])
        L.sim.fill(L.sim.disk_uuids(vm)[0], seed=4)
        journal = tmp_path / "state" / "clones"
        _kill_job_run(L, {**hcbak_env, **L.env}, journal, task_delay=0.4, after=0.1)
        L.sim.faults.task_delay(0.005)
        L.sim.wait_idle()
        assert L.worker_clones(), "the kill did not leave a clone behind"
        snapshots = L.hcbak_snapshots(vm)  # the dead run's: it takes the repository
        (tmp_path / "repo").rename(tmp_path / "repo-moved")
        failed = run_hcbak("job", "run", "nightly", "--json", env=L.env)
        assert failed.returncode == 4, failed.stderr
        assert "is not an hcbak repository" in failed.stderr
        L.sim.wait_idle()
        assert L.hcbak_snapshots(vm) == snapshots  # and the failed run's own is gone
        assert not L.worker_clones()
        assert not list(journal.glob("*.json"))


def test_a_backup_loads_only_what_it_uses(tmp_path: Path, run_hcbak: RunHcbak) -> None:
    """Every module a cron run imports costs every run (docs/operations.md, "a run
    imports only what it uses"); `-X importtime` lists what a real backup imported."""
    with lab(tmp_path) as L:
        vm = L.sim.create_vm("web01", [2 * MiB], tags=["nightly"])
        L.sim.fill(L.sim.disk_uuids(vm)[0], seed=4)
        proc = run_hcbak("job", "run", "nightly", env={**L.env, "PYTHONPROFILEIMPORTTIME": "1"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        imported = {
            line.rpartition("|")[2].strip()
            for line in proc.stderr.splitlines()
            if line.startswith("import time:")
        }
        assert "hcbak.engine.backup" in imported  # the list is real
        unused = {"typer", "rich", "subprocess", "smtplib", "difflib", "hcbak.hypercore.roles"}
        assert not unused & imported


def test_due_runs_a_never_run_scheduled_job_once(tmp_path: Path, run_hcbak: RunHcbak) -> None:
    with lab(tmp_path, schedule="0 3 * * *") as L:
        L.sim.create_vm("web01", [1 * MiB], tags=["nightly"])
        first = run_hcbak("job", "run", "--due", "--json", env=L.env)
        assert first.returncode == 0, first.stderr
        assert [j["job"] for j in json.loads(first.stdout)["jobs"]] == ["nightly"]
        second = run_hcbak("job", "run", "--due", "--json", env=L.env)
        assert second.returncode == 0
        assert json.loads(second.stdout)["jobs"] == []


def test_job_run_needs_exactly_one_of_names_all_due(run_hcbak: RunHcbak) -> None:
    proc = run_hcbak("job", "run")
    assert proc.returncode == 2
    assert "exactly one" in proc.stderr


def test_notify_test_sends_to_the_given_address(tmp_path: Path, run_hcbak: RunHcbak) -> None:
    with lab(tmp_path) as L, smtp_server() as inbox:
        L.config.smtp = SMTPConfig(
            host=inbox.host, port=inbox.port, security="none", sender="hcbak@example.com"
        )
        save_config(L.config)
        bad = run_hcbak("notify", "test", "--to", "not-an-address", env=L.env)
        proc = run_hcbak("notify", "test", "--to", "me@example.com", env=L.env)
        assert proc.returncode == 0, proc.stderr
    assert bad.returncode == 2 and "--to: 'not-an-address' is not an email address" in bad.stderr
    (msg,) = inbox.messages  # nothing was sent for the bad address
    assert msg["To"] == "me@example.com" and msg["Subject"] == "[hcbak] test message"


def test_tty_shows_a_live_view_per_disk_on_stderr(
    tmp_path: Path, hcbak_env: dict[str, str]
) -> None:
    import os
    import pty

    with lab(tmp_path) as L:
        vm = L.sim.create_vm("web01", [2 * MiB], tags=["nightly"])
        L.sim.fill(L.sim.disk_uuids(vm)[0], seed=1)
        master, slave = pty.openpty()
        env = {**hcbak_env, **L.env, "TERM": "xterm", "COLUMNS": "120"}
        proc = subprocess.Popen(
            [*HCBAK, "job", "run", "nightly"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=slave,
            text=True,
        )
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        out, _ = proc.communicate(timeout=60)
        os.close(master)
    screen = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, screen
    assert "web01 slot 0 [no base]" in screen  # the per-disk progress bar's label
    assert "MiB/s" in screen and "2.0/2.0 MiB" in screen  # speed and bytes done/total
    assert not re.search(r"^\d{4}-\d\d-\d\dT", screen, re.M)  # no cron-style lines on a TTY
    assert "web01" in out  # the summary table still goes to stdout


def test_sigterm_mid_run_removes_the_new_snapshot_and_clone_and_exits_130(
    tmp_path: Path, hcbak_env: dict[str, str]
) -> None:
    with lab(tmp_path) as L:
        vm = L.sim.create_vm("web01", [2 * MiB], tags=["nightly"])
        L.sim.fill(L.sim.disk_uuids(vm)[0], seed=4)
        L.sim.faults.task_delay(0.3)
        proc = subprocess.Popen(
            [*HCBAK, "job", "run", "nightly"],
            env={**hcbak_env, **L.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while not L.hcbak_snapshots(vm) and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert "interrupted" in err
        L.sim.wait_idle()
        assert L.hcbak_snapshots(vm) == []
        assert not L.worker_clones()
        assert not (tmp_path / "state" / "locks" / "job-nightly.lock").exists()


def test_due_alerts_once_when_no_successful_point_within_alert_after(
    tmp_path: Path, run_hcbak: RunHcbak
) -> None:
    from datetime import UTC, datetime, timedelta

    from hcbak.engine.state import JobHistory, save_history

    with lab(tmp_path, alert_after="1h") as L, smtp_server() as inbox:
        L.config.smtp = SMTPConfig(host=inbox.host, port=inbox.port, security="none",
                                   sender="hcbak@example.com")  # fmt: skip
        L.config.jobs["nightly"].notify = EmailNotify(to=["ops@example.com"], on=["failure"])
        save_config(L.config)
        two_hours_ago = datetime.now(UTC) - timedelta(hours=2)
        save_history(tmp_path / "state", "nightly", JobHistory(two_hours_ago, two_hours_ago))
        first = run_hcbak("job", "run", "--due", "--json", env=L.env)
        second = run_hcbak("job", "run", "--due", env=L.env)
    assert first.returncode == 1, first.stderr  # the watch warns; it runs nothing
    assert "no successful point for longer than 1h" in first.stderr
    report = json.loads(first.stdout)
    _validate(report, _schema())
    assert report["status"] == "warning" and report["jobs"] == []
    (alert,) = report["alerts"]
    assert alert.startswith("job nightly has no successful point for longer than 1h")
    assert "no successful point" not in second.stderr  # once per alert_after window
    assert second.returncode == 0, second.stderr
    (msg,) = inbox.messages
    assert msg["Subject"] == "[hcbak] nightly: RPO ALERT"


def test_plain_output_and_run_log_tell_every_event_and_warning(
    tmp_path: Path, run_hcbak: RunHcbak
) -> None:
    """Not on a TTY (cron): a VM's warning is on stderr, not only in --json, and the
    run log holds what stderr showed plus the snapshot deletions."""
    with lab(tmp_path) as L:
        vm = L.sim.create_vm("web01", [1 * MiB, 1 * MiB], tags=["nightly"])
        L.sim.fill(L.sim.disk_uuids(vm)[0], seed=7)
        L.sim.set_disable_snapshotting(L.sim.disk_uuids(vm)[1])
        first = run_hcbak("job", "run", "nightly", env=L.env)
        second = run_hcbak("job", "run", "nightly", env=L.env)
    assert first.returncode == 1, first.stderr
    warning = "nightly/web01: warning: disk slot 1: snapshots disabled"
    assert warning in first.stderr
    logs = sorted((tmp_path / "state" / "logs").glob("run-*.log"))
    assert len(logs) == 2
    text = logs[1].read_text(encoding="utf-8")
    for line in ("nightly/web01: backing up", "nightly/web01 slot 0: reading",
                 "nightly/web01: finished: point ", "web01: disk slot 1: snapshots disabled",
                 "web01: deleted snapshot "):  # fmt: skip
        assert line in text, f"{line!r} not in the run log:\n{text}"
    assert second.returncode == 1


def test_a_damaged_point_hides_no_other_point_from_listing_restore_or_backup(
    tmp_path: Path, run_hcbak: RunHcbak
) -> None:
    """One manifest with a bit flip: the other points are listed (exit 6, naming it),
    restored by VM@latest (exit 1, naming it), and the job still backs up (exit 1),
    keeping the snapshot of the point it cannot read."""
    with lab(tmp_path) as L:
        web = L.sim.create_vm("web01", [2 * MiB], tags=["nightly"])
        db = L.sim.create_vm("db01", [2 * MiB], tags=["nightly"])
        for i, vm in enumerate((web, db)):
            L.sim.fill(L.sim.disk_uuids(vm)[0], seed=80 + i)
        first = json.loads(run_hcbak("job", "run", "nightly", "--json", env=L.env).stdout)
        damaged = next(v for v in first["jobs"][0]["vms"] if v["vm"] == "web01")["point_id"]
        db_point = next(v for v in first["jobs"][0]["vms"] if v["vm"] == "db01")
        disk = L.sim.disk_uuids(db)[0]
        expected = L.snapshot_content(db_point["snapshot_uuid"], disk, 2 * MiB)
        manifest = L.repo_path / "points" / damaged
        data = bytearray(manifest.read_bytes())
        data[100:104] = bytes(b ^ 0xFF for b in data[100:104])
        manifest.write_bytes(bytes(data))

        listed = run_hcbak("points", "list", "--json", env=L.env)
        out = tmp_path / "db01.raw"
        restored = run_hcbak("restore", "disk", "db01@latest", "--disk", "0", "--to", str(out),
                             env=L.env)  # fmt: skip
        second = run_hcbak("job", "run", "nightly", "--json", env=L.env)
        web_snapshots = [s["label"] for s in L.hcbak_snapshots(web)]
    for proc in (listed, restored, second):
        assert_no_traceback(proc)
    assert listed.returncode == 6, listed.stderr
    doc = json.loads(listed.stdout)
    assert [p["vm"] for p in doc["points"]] == ["db01"]
    assert [d["id"] for d in doc["damaged"]] == [damaged]
    assert damaged in listed.stderr
    assert restored.returncode == 1, restored.stderr
    assert damaged in restored.stderr
    assert out.read_bytes() == expected
    assert second.returncode == 1, second.stderr
    report = json.loads(second.stdout)
    statuses = {v["vm"]: v["status"] for v in report["jobs"][0]["vms"]}
    assert statuses == {"web01": "ok", "db01": "ok"}
    assert any(damaged in w for w in report["jobs"][0]["warnings"])
    assert f"hcbak:nightly:{damaged}" in web_snapshots, "the unreadable point's snapshot stays"


def test_a_cluster_with_an_unusable_ca_file_fails_its_job_only(
    tmp_path: Path, run_hcbak: RunHcbak
) -> None:
    """A CA file that is not PEM (replaced after `cluster add` checked it) is that job's
    clear failure; the other jobs of the run still back up (exit 3)."""
    from hcbak.config import JobConfig, TLSConfig

    with lab(tmp_path) as L:
        L.sim.fill(
            L.sim.disk_uuids(L.sim.create_vm("web01", [1 * MiB], tags=["nightly"]))[0], seed=9
        )
        garbage = tmp_path / "garbage.pem"
        garbage.write_text("junk\n")
        bad = sim_cluster_config(L.sim, "bad", password_env="HCBAK_TEST_CLUSTER_PW")
        bad.tls = TLSConfig(ca_file=str(garbage))
        L.config.clusters["bad"] = bad
        L.config.jobs["other"] = JobConfig(name="other", cluster="bad", repo="main", vms=["web01"])
        save_config(L.config)
        proc = run_hcbak("job", "run", "other", "nightly", "--json", env=L.env)
    assert_no_traceback(proc)
    assert proc.returncode == 3, proc.stderr
    jobs = {j["job"]: j for j in json.loads(proc.stdout)["jobs"]}
    assert jobs["nightly"]["status"] == "success"
    assert jobs["other"]["status"] == "failed"
    assert f"cannot use CA file {garbage}" in jobs["other"]["reason"]
    assert f"error: job other failed: cannot use CA file {garbage}" in proc.stderr


HOLD_REPO = """
import sys, time
from pathlib import Path
from hcbak.repo import open_repo
with open_repo(Path(sys.argv[1]), lock="exclusive", command="repo prune"):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_repository_held_by_prune_makes_the_job_busy_exit_5_not_interrupted(
    tmp_path: Path, run_hcbak: RunHcbak
) -> None:
    with lab(tmp_path) as L:
        vm = L.sim.create_vm("web01", [1 * MiB], tags=["nightly"])
        L.sim.fill(L.sim.disk_uuids(vm)[0], seed=3)
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_REPO, str(L.repo_path)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
            proc = run_hcbak("job", "run", "nightly", "--json", env=L.env)
        finally:
            holder.kill()
            holder.wait()
        L.sim.wait_idle()
        left = L.hcbak_snapshots(vm)
    assert_no_traceback(proc)
    assert proc.returncode == 5, proc.stderr
    (job,) = json.loads(proc.stdout)["jobs"]
    assert (job["status"], job["exit_code"]) == ("locked", 5)
    assert f"pid {holder.pid}" in job["reason"]
    assert "interrupted" not in proc.stderr
    assert "nightly/web01: finished: failed: not backed up: " in proc.stderr
    assert left == [], "the snapshot taken while the repository opened is removed"


def test_an_unresolvable_secret_in_a_job_is_a_config_error_exit_2(
    tmp_path: Path, run_hcbak: RunHcbak
) -> None:
    with lab(tmp_path) as L:
        env = {k: v for k, v in L.env.items() if k != "HCBAK_TEST_CLUSTER_PW"}
        proc = run_hcbak("job", "run", "nightly", "--json", env=env)
    assert_no_traceback(proc)
    assert proc.returncode == 2, proc.stderr
    (job,) = json.loads(proc.stdout)["jobs"]
    assert (job["status"], job["exit_code"]) == ("failed", 2)
    assert "HCBAK_TEST_CLUSTER_PW" in job["reason"]
