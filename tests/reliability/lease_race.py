"""One scenario shared by the lease tests: a prune races a live backup that depends on
blocks the prune would delete.

Point P1 of web01 is forgotten, so its blocks are unreferenced but still indexed (a
dry-run prune proves it would delete them). The next backup reads the disk again and
deduplicates against those blocks; a prune that wrongly judges the backup's lock stale
deletes them under it, and the backup still exits 0 with a point that does not restore.
`backup_env` makes the backup look like another machine (tests/reliability/test_leases.py).
"""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

from engine.helpers import Lab, MiB

from hcbak.repo.locks import LockInfo, read_locks

from .helpers import Ledger, cli, guest_writes, spawn, wait_for


def backup_lock(lab: Lab, backup: subprocess.Popen[bytes]) -> LockInfo | None:
    return next((lk for lk in read_locks(lab.repo_path) if lk.pid == backup.pid), None)


def prune_races_a_backup_that_depends_on_forgotten_blocks(
    lab: Lab, backup_env: dict[str, str], check_lock: object = None
) -> None:
    vm = lab.sim.create_vm("web01", [4 * MiB], tags=["nightly"])
    disk = lab.sim.disk_uuids(vm)[0]
    lab.sim.fill(disk, seed=40)
    ledger = Ledger(lab, [disk])
    assert cli(lab.env, "job", "run", "nightly").code == 0
    [first] = lab.points()
    forgot = cli(lab.env, "points", "forget", first.id)
    assert forgot.code == 0, forgot.err
    would = cli(lab.env, "repo", "prune", "main", "--dry-run", "--json")
    assert would.code == 0, would.err
    assert json.loads(would.out)["unused_blocks"] > 0, "prune has the forgotten blocks to delete"

    guest_writes(lab, disk, random.Random(40))
    live = ledger.live_hashes()
    lab.sim.faults.task_delay(0.5)  # the backup holds its lock for a few seconds
    backup = spawn({**lab.env, **backup_env}, "job", "run", "nightly")
    # The backup has loaded the index (P1's blocks) once its clone is on the worker:
    # the repository opens while the snapshot and the clone are being made.
    wait_for(lambda: bool(lab.worker_clones()) or backup.poll() is not None)
    lock = backup_lock(lab, backup)
    if backup.poll() is not None or lock is None:
        backup.kill()
        _, err = backup.communicate()
        raise AssertionError(f"the backup ended before prune raced it: {err.decode()[-2000:]}")
    if callable(check_lock):
        check_lock(lock)  # the injected host identity / clock reached the lock file

    busy = cli(lab.env, "repo", "prune", "main", "--json")
    busy.assert_clean()
    assert backup.poll() is None, "the race is real: the backup was still running"
    assert busy.code == 5, f"prune ran under a live backup (exit {busy.code}): {busy.err}"
    assert f"pid {backup.pid}" in busy.err, "the locked error names the holder"

    waited = cli(lab.env, "repo", "prune", "main", "--wait", "60", "--json")
    assert waited.code == 0, waited.err
    _, err = backup.communicate(timeout=60)
    assert backup.returncode == 0, err.decode()
    ledger.record_new(live)
    # The next incremental builds on the new point's block map.
    guest_writes(lab, disk, random.Random(41))
    lab.sim.faults.task_delay(0.005)
    live = ledger.live_hashes()
    assert cli(lab.env, "job", "run", "nightly").code == 0
    ledger.record_new(live)
    assert ledger.check() == 2
    verify = cli(lab.env, "repo", "verify", "main", "--read-data")
    assert verify.code == 0, verify.out + verify.err
    assert read_locks(Path(lab.repo_path)) == []
