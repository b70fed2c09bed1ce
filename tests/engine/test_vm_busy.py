"""A snapshot request answered 500 because the VM is busy with another task (another
job's snapshot, a dead run's task): the cluster refused it, no label will appear, so
the run must not wait a read timeout for one. Real `hcbak job run` subprocesses against
the simulator, which answers such a POST as a cluster does (docs/simulator.md, "Busy
VM"); the other task is a real snapshot POST by another client."""

from __future__ import annotations

import json
import time
from pathlib import Path

from harness import RunHcbak, assert_no_traceback

from hcbak.engine.connect import connection_settings
from hcbak.hypercore.client import hypercore_session

from .helpers import Lab, MiB, lab


def _keep_vm_busy(L: Lab, vm: str, seconds: float) -> None:
    """Another client's snapshot of `vm`, whose task runs `seconds` (the VM's other
    tasks, hcbak's own included, take the lab's usual few milliseconds)."""
    L.sim.faults.task_delay(seconds)
    try:
        with hypercore_session(connection_settings(L.config.clusters["lab"])) as hc:
            body = {"domainUUID": vm, "label": "other-job", "type": "USER", "replication": False}
            resp = hc.pool.send("POST", "/VirDomainSnapshot", json=body, idempotent=False)
            assert resp.status_code == 200, resp.text
    finally:
        L.sim.faults.task_delay(0.005)


def test_a_briefly_busy_vm_is_asked_again_soon_not_after_a_read_timeout(
    tmp_path: Path, run_hcbak: RunHcbak
) -> None:
    # read_timeout is 5 s in the lab: waiting for the label once would take longer
    # than the whole run may take here.
    with lab(tmp_path, retries=1) as L:
        L.config.jobs["nightly"].retry_wait = 1.0
        L.save()
        vm = L.sim.create_vm("web01", [1 * MiB], tags=["nightly"])
        _keep_vm_busy(L, vm, 1.2)
        started = time.monotonic()
        proc = run_hcbak("job", "run", "nightly", "--json", env=L.env)
        took = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    (point,) = json.loads(proc.stdout)["jobs"][0]["vms"]
    assert point["status"] == "ok"
    assert took < 4.0, f"the run took {took:.1f} s"
    (log,) = (tmp_path / "state" / "logs").glob("run-*.log")
    assert "refused (HTTP 500, VM busy?)" in log.read_text()  # the fault landed


def test_a_vm_busy_for_longer_fails_quickly_saying_why(tmp_path: Path, run_hcbak: RunHcbak) -> None:
    with lab(tmp_path) as L:
        vm = L.sim.create_vm("web01", [1 * MiB], tags=["nightly"])
        _keep_vm_busy(L, vm, 6.0)
        started = time.monotonic()
        proc = run_hcbak("job", "run", "nightly", "--json", env=L.env)
        took = time.monotonic() - started
        assert L.hcbak_snapshots(vm) == []
    assert_no_traceback(proc)
    assert proc.returncode == 4, proc.stderr
    (failed,) = json.loads(proc.stdout)["jobs"][0]["vms"]
    assert failed["status"] == "failed"
    assert "refused: the cluster answered HTTP 500 to 2 request(s)" in failed["reason"]
    assert "busy with another task" in failed["reason"]
    assert took < 3.0, f"the run took {took:.1f} s"
