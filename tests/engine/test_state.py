"""Job lock, run history, RPO watch, clone journal and hooks (real files, processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hcbak.engine import state
from hcbak.engine.hooks import run_hook
from hcbak.errors import HookError, LockedError

HOLDER = """
import sys, time
from pathlib import Path
from hcbak.engine.state import JobLock
lock = JobLock(Path(sys.argv[1]), "nightly")
lock.acquire()
print("held", flush=True)
time.sleep(60)
"""


def _hold_lock(state_dir: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(state_dir)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_job_lock_held_by_a_live_process_names_its_pid(tmp_path: Path) -> None:
    proc = _hold_lock(tmp_path)
    try:
        with pytest.raises(LockedError) as info:
            state.JobLock(tmp_path, "nightly").acquire()
        assert f"pid {proc.pid}" in str(info.value)
        assert info.value.exit_code == 5
        with state.JobLock(tmp_path, "other"):  # other jobs are not blocked
            pass
    finally:
        proc.kill()
        proc.wait()


def test_job_lock_left_by_kill_9_is_taken_over(tmp_path: Path) -> None:
    proc = _hold_lock(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with state.JobLock(tmp_path, "nightly") as lock:
        assert lock.path.exists()
    assert not lock.path.exists()


def test_history_roundtrip_and_rpo_overdue(tmp_path: Path) -> None:
    now = datetime(2026, 1, 10, 12, tzinfo=UTC)
    assert state.load_history(tmp_path, "j").last_run is None
    hist = state.JobHistory(last_run=now, last_success=now - timedelta(hours=40))
    state.save_history(tmp_path, "j", hist)
    loaded = state.load_history(tmp_path, "j")
    assert loaded.last_success == now - timedelta(hours=40)
    assert state.rpo_overdue(loaded, "36h", now)
    assert not state.rpo_overdue(loaded, "2d", now)
    assert not state.rpo_overdue(state.JobHistory(), "1h", now)


def _set_pid(path: Path, pid: int, *, start: str | None = None) -> None:
    """Make a journal entry look written by process `pid` (its identity too: its start
    time, or `start` for a writer that had this pid before)."""
    import json

    from hcbak.repo.holders import _process_start

    entry = json.loads(path.read_text())
    entry["pid"] = pid
    entry["identity"].update(pid=pid, pid_start=start or _process_start(pid) or "1")
    path.write_text(json.dumps(entry))


def test_clone_journal_lists_clones_of_dead_runs_only_for_its_cluster(tmp_path: Path) -> None:
    state.journal_clone(tmp_path, "c1", {"cluster": "prod"})
    state.journal_clone(tmp_path, "c2", {"cluster": "lab"})
    state.journal_clone(tmp_path, "c3", {"cluster": "prod"})
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        _set_pid(tmp_path / "clones" / "c3.json", live.pid)  # another run still uses it
        _set_pid(tmp_path / "clones" / "c1.json", 2**22 + 7)  # no such process
        assert [e["clone_uuid"] for e in state.journaled_clones(tmp_path, "prod")] == ["c1"]
        state.forget_clone(tmp_path, "c1")
        assert state.journaled_clones(tmp_path, "prod") == []
    finally:
        live.kill()
        live.wait()


def test_a_journal_entry_whose_pid_now_names_another_process_is_of_a_dead_run(
    tmp_path: Path,
) -> None:
    """pid_max is 32768 here and a busy host wraps it: a dead run's pid taken by
    another process (or thread) kept its clone "live" and the next run left it on the
    worker (an orphan clone in the full suite). The writer's start time tells them apart."""
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        state.journal_clone(tmp_path, "c1", {"cluster": "prod"})
        state.journal_task(tmp_path, "task-9", "prod")
        _set_pid(tmp_path / "clones" / "c1.json", live.pid, start="1")  # an earlier owner
        [task_file] = (tmp_path / "tasks").glob("*.json")
        _set_pid(task_file, live.pid, start="1")
        assert [e["clone_uuid"] for e in state.journaled_clones(tmp_path, "prod")] == ["c1"]
        assert state.tasks_of_dead_runs(tmp_path, "prod") == ["task-9"]
        assert state.live_clone_uuids(tmp_path) == set()
        _set_pid(tmp_path / "clones" / "c1.json", live.pid)  # the live process wrote it
        assert state.journaled_clones(tmp_path, "prod") == []
        assert state.live_clone_uuids(tmp_path) == {"c1"}
    finally:
        live.kill()
        live.wait()


def test_hook_sees_hcbak_variables(tmp_path: Path) -> None:
    out = tmp_path / "env.txt"
    run_hook(
        f'echo "$HCBAK_PHASE $HCBAK_JOB $HCBAK_STATUS" > {out}',
        "post",
        {"job": "nightly", "status": "success"},
    )
    assert out.read_text().strip() == "post nightly success"


def test_failing_hook_raises_hook_error_with_status_and_last_line() -> None:
    with pytest.raises(HookError) as info:
        run_hook("echo not ready; exit 3", "pre", {"job": "j"})
    assert "status 3" in str(info.value) and "not ready" in str(info.value)


def test_hook_timeout_is_a_hook_error() -> None:
    start = time.monotonic()
    with pytest.raises(HookError, match="did not finish"):
        run_hook("sleep 5", "pre", {}, timeout=0.3)
    assert time.monotonic() - start < 4
