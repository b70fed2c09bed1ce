"""`hcbak demo` runs the whole tour against the in-process simulator and exits 0."""

from __future__ import annotations

import re

from harness import RunHcbak, assert_no_traceback


def test_demo_runs_full_and_incremental_backup_and_restore_check(run_hcbak: RunHcbak) -> None:
    proc = run_hcbak("demo", timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_no_traceback(proc)
    out = proc.stdout
    assert "$ hcbak cluster add demo" in out and "--encrypt" in out
    # web01 and web02 hold the same bytes: the first run stores them once between them
    first_run = out.split("5. First run")[1].split("6. ")[0]
    new = {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"^   (web0[12]) +ok +read +\d+ KiB, new +(\d+) KiB", first_run, re.M)
    }
    assert len(new) == 2 and sum(new.values()) == 14336, first_run
    assert "CBT: snapDiff" in out
    assert "identical to the snapshot it was taken from" in out
    assert "Demo finished" in out
