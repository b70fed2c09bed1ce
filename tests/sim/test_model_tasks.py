"""Task bookkeeping of the model (no HTTPS needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hcbak.sim import model as model_mod
from hcbak.sim.faults import Faults
from hcbak.sim.model import ClusterModel


def test_old_finished_task_records_are_forgotten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(model_mod, "MAX_TASKS", 10)
    model = ClusterModel(tmp_path, Faults(1, lambda i, m: None), task_delay=0, nodes=1)
    vm = model.create_vm("vm", [4096])
    tags = [model.ops.request_snapshot({"domainUUID": vm}, "")[0] for _ in range(25)]
    assert len(model.s["tasks"]) == 10
    assert model.task_record(tags[0]) is None
    assert model.task_record(tags[-1])["state"] == "COMPLETE"  # type: ignore[index]
    assert len(model.s["snapshots"]) == 25


def test_clone_without_snapshot_copies_the_live_disk(tmp_path: Path) -> None:
    model = ClusterModel(tmp_path, Faults(1, lambda i, m: None), task_delay=0, nodes=1)
    vm = model.create_vm("vm", [8192])
    disk = model.vm_disks(vm)[0]["uuid"]
    model.write(disk, 0, b"live")
    body = {"template": {"virDomainUUID": model.s["worker"]}}
    _, clone = model.ops.request_disk_clone(disk, body, "")
    model.write(disk, 0, b"LIVE")
    dev = model.store.device_path(clone)
    assert dev.read_bytes()[:4] == b"live"
    assert model.snap_diff(clone, 0, 0) == [(0, 4)]
