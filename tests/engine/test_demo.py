"""`hcbak demo` runs the whole tour against the in-process simulator and exits 0."""

from __future__ import annotations

from conftest import RunHcbak, assert_no_traceback


def test_demo_runs_full_and_incremental_backup_and_restore_check(run_hcbak: RunHcbak) -> None:
    proc = run_hcbak("demo", timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_no_traceback(proc)
    out = proc.stdout
    assert "$ hcbak cluster add demo" in out and "--encrypt" in out
    assert "web02    ok      read  14336 KiB, new      0 KiB" in out  # the clone deduplicated
    assert "CBT: snapDiff" in out
    assert "identical to the snapshot it was taken from" in out
    assert "Demo finished" in out
