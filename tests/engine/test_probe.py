"""`hcbak cluster probe` against the simulator: every step passes, a fault at any step
fails exactly that step, and nothing is ever left behind (not even after a SIGKILL).

The faults are the simulator's own (task errors, injected 500s, a guest write to the
clone); each is switched on when the probe announces the step (`on_step`), so the
test proves where it landed: that step failed, the ones before passed, none after ran.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from harness import HCBAK, RunHcbak

from hcbak.engine.connect import connection_settings
from hcbak.engine.probe import STEPS, ProbeJournal, run_probe
from hcbak.hypercore.client import hypercore_session

from .helpers import Lab, lab, wait_for

# step -> how to make it fail (a simulator fault, or a config change)
FAULTS: dict[str, tuple[str, Any]] = {
    "find the worker VM": ("config", {"worker_vm": "no-such-vm"}),
    "create the scratch VM": ("tasks", "create"),
    "write the pattern": ("tasks", "upload"),
    "snapshot 1": ("tasks", "snapshot"),
    "snapshot 2": ("tasks", "snapshot"),
    "snapDiff": ("500", ("POST", "/VirDomainBlockDevice/", 20)),
    "clone onto the worker": ("tasks", "clone"),
    "locate the device": ("config", {"device_root": "/nonexistent-hcbak-dev"}),
    "read and check": ("guest write", None),
    "remove the clone": ("500", ("DELETE", "/VirDomainBlockDevice/", 2)),
    "delete the snapshots": ("500", ("DELETE", "/VirDomainSnapshot/", 2)),
    "delete the scratch VM": ("500", ("DELETE", "/VirDomain/", 2)),
    "restore upload": ("tasks", "upload"),
    "remove the upload": ("500", ("DELETE", "/VirtualDisk/", 2)),
}


def _nothing_left(lb: Lab) -> None:
    sim = lb.sim
    assert [v["name"] for v in sim.vms() if v["name"].startswith("hcbak-probe")] == []
    assert sim.snapshots() == []
    assert sim.virtual_disks() == []
    assert [d for d in sim.block_devices() if d["vm"] == sim.worker_vm_uuid][1:] == []
    assert not (lb.tmp / "state" / "probe" / "lab.json").exists()


def test_probe_passes_reports_shapes_the_simulator_matches_and_leaves_nothing(
    tmp_path: Path, run_hcbak: RunHcbak
) -> None:
    with lab(tmp_path) as lb:
        report = tmp_path / "probe.json"
        proc = run_hcbak("cluster", "probe", "lab", "--report", str(report), "--json", env=lb.env)
        assert proc.returncode == 0, proc.stderr
        steps = json.loads(proc.stdout)["steps"]
        assert [s["name"] for s in steps] == list(STEPS)
        assert {s["status"] for s in steps} == {"ok"}
        _nothing_left(lb)
        shapes = json.loads(report.read_text())
        assert shapes["icosVersion"] and [s["name"] for s in shapes["steps"]] == list(STEPS)
        text = report.read_text()
        assert lb.sim.worker_vm_uuid not in text and "hcbak-probe" not in text  # no values
        same = run_hcbak("sim", "check-shapes", str(report), env=lb.env)
        assert (same.returncode, same.stdout) == (0, ""), same.stdout


@pytest.mark.parametrize("target", list(FAULTS))
def test_a_fault_at_each_step_fails_that_step_and_leaves_nothing_behind(
    tmp_path: Path, target: str
) -> None:
    kind, arg = FAULTS[target]
    with lab(tmp_path) as lb:
        sim = lb.sim
        cluster = lb.config.clusters["lab"]
        if kind == "config":
            cluster = dataclasses.replace(cluster, **arg)

        def on_step(name: str) -> None:
            if name != target:
                return
            if kind == "tasks":
                sim.faults.fail_tasks(arg)
            elif kind == "500":
                method, prefix, n = arg
                sim.faults.fail_next(n, method, prefix)
            elif kind == "guest write":
                clone = next(d["uuid"] for d in sim.block_devices() if d["sourceSnapshotUUID"])
                sim.write(clone, 4096, b"not the pattern")

        with hypercore_session(connection_settings(cluster)) as client:
            result = run_probe(
                client, cluster, tmp_path / "state", on_step=on_step, locate_timeout=0.2
            )
        sim.faults.clear()
        statuses = {s.name: s.status for s in result.steps}
        assert result.failed is not None and result.failed.name == target, result.steps
        before = STEPS[: STEPS.index(target)]
        after = STEPS[STEPS.index(target) + 1 :]
        assert [statuses[s] for s in before] == ["ok"] * len(before)
        assert [statuses[s] for s in after] == ["not run"] * len(after)
        assert result.failed.error and result.failed.fix
        landed = {
            "tasks": "injected fault",
            "500": "HTTP 500",
            "guest write": "does not hold the pattern",
            "config": "no-such-vm" if "worker_vm" in (arg or {}) else "did not appear",
        }[kind]
        assert landed in result.failed.error, result.failed.error
        assert "cleanup" not in statuses  # the cleanup itself succeeded
        _nothing_left(lb)


def test_a_probe_killed_midway_is_cleaned_up_by_the_next_one(
    tmp_path: Path, run_hcbak: RunHcbak, hcbak_env: dict[str, str]
) -> None:
    with lab(tmp_path) as lb:
        sim = lb.sim
        sim.faults.task_delay(0.4)  # slow tasks: time to kill the probe mid-run
        proc = subprocess.Popen(
            [*HCBAK, "cluster", "probe", "lab"],
            env={**hcbak_env, **lb.env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_for(lambda: len(sim.snapshots()) >= 1, timeout=30)
            assert proc.poll() is None  # alive when killed: its cleanup never ran
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
        sim.wait_idle()
        journal = ProbeJournal(tmp_path / "state", "lab")
        assert journal.data.get("vm")  # what was left, and the journal that names it
        assert [v["name"] for v in sim.vms() if v["name"].startswith("hcbak-probe")]
        sim.faults.task_delay(0.005)
        started = time.monotonic()
        again = run_hcbak("cluster", "probe", "lab", env=lb.env)
        assert again.returncode == 0, again.stderr
        assert time.monotonic() - started < 60
        _nothing_left(lb)
