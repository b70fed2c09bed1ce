"""A snapshot request answered 500 because the VM is busy with another task (another
job's snapshot, a dead run's task): the cluster refused it, no label will appear, so
the run must not wait a read timeout for one. Real `hcbak job run` subprocesses against
the simulator, which answers such a POST as a cluster does (docs/simulator.md, "Busy
VM"); the other task is a real snapshot POST by another client.

Nothing here depends on how fast the machine is: the other task is held unfinished
until the test releases it (`Simulator.finish_task`), and the test releases it only
once hcbak has logged the refusal, so hcbak always meets the busy VM first. "Soon, not
after a read timeout" is checked in the request log: one look for the label between
two snapshot requests (the bounded wait), not the polling of a label wait."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from harness import RunHcbak, assert_no_traceback

from hcbak.engine.connect import connection_settings
from hcbak.hypercore.client import hypercore_session

from .helpers import Lab, MiB, lab, wait_for

OTHER = "other-job"
REFUSED = "refused (HTTP 500, VM busy?)"


@contextmanager
def _vm_busy(L: Lab, vm: str) -> Iterator[str]:
    """Another client's snapshot of `vm`, whose task stays unfinished until the block
    ends (or the test calls `L.sim.finish_task` on the tag it yields)."""
    L.sim.faults.task_delay(3600.0)
    try:
        with hypercore_session(connection_settings(L.config.clusters["lab"])) as hc:
            body = {"domainUUID": vm, "label": OTHER, "type": "USER", "replication": False}
            resp = hc.pool.send("POST", "/VirDomainSnapshot", json=body, idempotent=False)
            assert resp.status_code == 200, resp.text
    finally:
        L.sim.faults.task_delay(0.005)  # hcbak's own tasks take the usual milliseconds
    tag = str(resp.json()["taskTag"])
    try:
        yield tag
    finally:
        L.sim.finish_task(tag)


def _run_log_says(L: Lab, text: str) -> bool:
    logs = list((L.tmp / "state" / "logs").glob("run-*.log"))
    return any(text in p.read_text() for p in logs)


def _snapshot_calls(L: Lab, since: int) -> list[str]:
    """hcbak's snapshot POSTs ("POST <label>") and snapshot listings ("GET") in order."""
    calls = []
    for _node, method, path, body in list(L.sim.requests)[since:]:
        if method == "POST" and path.endswith("/VirDomainSnapshot"):
            calls.append(f"POST {body['label']}")
        elif method == "GET" and path.endswith("/VirDomainSnapshot"):
            calls.append("GET")
    return calls


def test_a_briefly_busy_vm_is_asked_again_soon_not_after_a_read_timeout(
    tmp_path: Path, run_hcbak: RunHcbak
) -> None:
    # read_timeout is 5 s in the lab: a label wait would poll /VirDomainSnapshot for
    # that long before asking again.
    with lab(tmp_path, retries=1) as L, ThreadPoolExecutor(1) as pool:
        L.config.jobs["nightly"].retry_wait = 1.0
        L.save()
        vm = L.sim.create_vm("web01", [1 * MiB], tags=["nightly"])
        with _vm_busy(L, vm) as other:
            since = len(L.sim.requests)
            run = pool.submit(run_hcbak, "job", "run", "nightly", "--json", env=L.env)
            # The fault lands before it is lifted: hcbak was refused while the VM was busy.
            wait_for(lambda: _run_log_says(L, REFUSED) or run.done(), timeout=60)
            assert _run_log_says(L, REFUSED), _finished(run.result())
            L.sim.finish_task(other)
            proc = run.result(timeout=120)
        calls = _snapshot_calls(L, since)
    assert proc.returncode == 0, proc.stderr
    (point,) = json.loads(proc.stdout)["jobs"][0]["vms"]
    assert point["status"] == "ok"
    posts = [i for i, c in enumerate(calls) if c.startswith("POST hcbak:")]
    assert len(posts) >= 2, calls
    assert calls[posts[0] + 1 : posts[1]] == ["GET"], calls  # one look, no label wait


def test_a_vm_busy_for_longer_fails_quickly_saying_why(tmp_path: Path, run_hcbak: RunHcbak) -> None:
    with lab(tmp_path) as L:
        vm = L.sim.create_vm("web01", [1 * MiB], tags=["nightly"])
        with _vm_busy(L, vm):  # busy for the whole run
            since = len(L.sim.requests)
            proc = run_hcbak("job", "run", "nightly", "--json", env=L.env)
            calls = _snapshot_calls(L, since)
            assert L.hcbak_snapshots(vm) == []
    assert_no_traceback(proc)
    assert proc.returncode == 4, proc.stderr
    (failed,) = json.loads(proc.stdout)["jobs"][0]["vms"]
    assert failed["status"] == "failed"
    assert "refused: the cluster answered HTTP 500 to 2 request(s)" in failed["reason"]
    assert "busy with another task" in failed["reason"]
    posts = [i for i, c in enumerate(calls) if c.startswith("POST hcbak:")]
    assert len(posts) == 2, calls
    assert calls[posts[0] + 1 : posts[1]] == ["GET"], calls  # one look, no label wait


def _finished(proc: subprocess.CompletedProcess[str]) -> str:
    return f"hcbak ended without meeting the busy VM: rc {proc.returncode}\n{proc.stderr}"
