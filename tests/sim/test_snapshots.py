"""Snapshots over REST: body rules, tasks, records, serials, replicas, survival."""

from __future__ import annotations

import time

from hcbak.sim import Simulator

from .helpers import Api

MIB = 1 << 20


def _snap(api: Api, vm: str, label: str = "hcbak") -> str:
    body = {"domainUUID": vm, "label": label, "type": "USER", "replication": False}
    return str(api.mutate("POST", "/VirDomainSnapshot", body)["createdUUID"])


def test_snapshot_body_needs_domainUUID_not_virDomainUUID(sim: Simulator, api: Api) -> None:
    vm = sim.create_vm("web01", [MIB])
    assert api.post("/VirDomainSnapshot", {"virDomainUUID": vm, "label": "x"}).status_code == 400
    assert api.post("/VirDomainSnapshot", {"label": "x"}).status_code == 400
    assert api.post("/VirDomainSnapshot", {"domainUUID": "missing"}).status_code == 400
    assert sim.snapshots() == []


def test_replication_defaults_to_true_and_is_recorded(sim: Simulator, api: Api) -> None:
    vm = sim.create_vm("web01", [MIB])
    implicit = api.mutate("POST", "/VirDomainSnapshot", {"domainUUID": vm, "label": "a"})
    explicit = _snap(api, vm, "b")
    records = {s["uuid"]: s for s in api.get("/VirDomainSnapshot").json()}
    assert records[implicit["createdUUID"]]["replication"] is True
    assert records[explicit]["replication"] is False


def test_task_moves_queued_running_complete_and_snapshot_appears_at_the_end(
    sim: Simulator, api: Api
) -> None:
    vm = sim.create_vm("web01", [MIB])
    sim.faults.task_delay(0.4)
    resp = api.post("/VirDomainSnapshot", {"domainUUID": vm, "replication": False})
    tag = resp.json()["taskTag"]
    assert isinstance(tag, str) and resp.json()["createdUUID"]
    seen = []
    while not seen or seen[-1] not in ("COMPLETE", "ERROR"):
        state = api.get(f"/TaskTag/{tag}").json()[0]["state"]
        if not seen or seen[-1] != state:
            seen.append(state)
            if state != "COMPLETE":
                assert sim.snapshots(vm) == []
        time.sleep(0.01)
    assert seen == ["QUEUED", "RUNNING", "COMPLETE"]
    assert [s["uuid"] for s in sim.snapshots(vm)] == [resp.json()["createdUUID"]]


def test_second_mutation_on_a_vm_with_a_running_task_gets_500(sim: Simulator, api: Api) -> None:
    vm = sim.create_vm("web01", [MIB])
    other = sim.create_vm("db01", [MIB])
    sim.faults.task_delay(0.3)
    first = api.post("/VirDomainSnapshot", {"domainUUID": vm, "replication": False})
    assert api.post("/VirDomainSnapshot", {"domainUUID": vm}).status_code == 500
    assert api.post("/VirDomainSnapshot", {"domainUUID": other}).status_code == 200
    api.wait(first)
    sim.faults.task_delay(0.0)
    assert api.post("/VirDomainSnapshot", {"domainUUID": vm}).status_code == 200


def test_snapshot_record_carries_serials_domain_and_timestamps(sim: Simulator, api: Api) -> None:
    vm = sim.create_vm("web01", [2 * MIB, MIB])
    disks = sim.disk_uuids(vm)
    first, second = _snap(api, vm, "one"), _snap(api, vm, "two")
    rec = api.get(f"/VirDomainSnapshot/{second}").json()[0]
    assert rec["domainUUID"] == vm and rec["label"] == "two" and rec["type"] == "USER"
    assert abs(rec["timestamp"] - time.time()) < 60 and isinstance(rec["timestamp"], int)
    assert rec["deviceSnapshots"] == [
        {"uuid": disks[0], "serialNumber": 2},
        {"uuid": disks[1], "serialNumber": 2},
    ]
    assert rec["domain"]["snapshotSerialNumber"] == 2
    assert rec["blockCountDiffFromSerialNumber"] == 1
    assert [b["capacity"] for b in rec["domain"]["blockDevs"]] == [2 * MIB, MIB]
    assert rec["localRetainUntilTimestamp"] == 0
    assert sim.vm_record(vm)["snapUUIDs"] == [first, second]  # oldest first


def test_device_serials_are_per_disk(sim: Simulator, api: Api) -> None:
    vm = sim.create_vm("web01", [MIB])
    _snap(api, vm)
    _snap(api, vm)
    added = api.mutate(
        "POST",
        "/VirDomainBlockDevice",
        {"virDomainUUID": vm, "type": "VIRTIO_DISK", "capacity": MIB},
    )["createdUUID"]
    rec = api.get(f"/VirDomainSnapshot/{_snap(api, vm)}").json()[0]
    serials = {d["uuid"]: d["serialNumber"] for d in rec["deviceSnapshots"]}
    assert serials[added] == 1 and serials[sim.disk_uuids(vm)[0]] == 3
    assert rec["domain"]["snapshotSerialNumber"] == 3


def test_delete_snapshot_answers_int_tag_and_updates_snap_uuids(sim: Simulator, api: Api) -> None:
    vm = sim.create_vm("web01", [MIB])
    first, second = _snap(api, vm), _snap(api, vm)
    resp = api.delete(f"/VirDomainSnapshot/{first}")
    assert isinstance(resp.json()["taskTag"], int)
    assert api.wait(resp)["state"] == "COMPLETE"
    assert sim.vm_record(vm)["snapUUIDs"] == [second]
    assert api.get(f"/VirDomainSnapshot/{first}").json() == []
    assert api.delete(f"/VirDomainSnapshot/{first}").status_code == 404


def test_disk_with_snapshotting_disabled_is_left_out(sim: Simulator, api: Api) -> None:
    vm = sim.create_vm("db01", [MIB, MIB])
    data, scratch = sim.disk_uuids(vm)
    sim.set_disable_snapshotting(scratch)
    rec = api.get(f"/VirDomainSnapshot/{_snap(api, vm)}").json()[0]
    assert [d["uuid"] for d in rec["deviceSnapshots"]] == [data]
    flags = {b["uuid"]: b["disableSnapshotting"] for b in rec["domain"]["blockDevs"]}
    assert flags == {data: False, scratch: True}


def test_replica_vm_refuses_rest_snapshots_but_receives_replicated_ones(
    sim: Simulator, api: Api
) -> None:
    replica = sim.create_replica("dr-web01", [MIB])
    assert sim.vm_record(replica)["sourceVirDomainUUID"]
    resp = api.post("/VirDomainSnapshot", {"domainUUID": replica, "replication": False})
    assert resp.status_code == 400 and "replication" in resp.json()["error"]
    disk = sim.disk_uuids(replica)[0]
    sim.write(disk, 0, b"one")
    s1 = sim.replicate_snapshot(replica, label="r1")
    sim.write(disk, MIB // 2, b"two")
    s2 = sim.replicate_snapshot(replica, label="r2")
    assert sim.vm_record(replica)["snapUUIDs"] == [s1, s2]
    assert all(s["replication"] for s in sim.snapshots(replica))
    assert sim.read_snapshot(s1, disk, MIB // 2, 3) == bytes(3)
    assert sim.snap_diff(disk, 1, 2) == [(MIB // 2, MIB // 2 + 3)]


def test_snapshot_data_survives_deleting_the_live_disk(sim: Simulator, api: Api) -> None:
    vm = sim.create_vm("web01", [MIB, MIB])
    disk = sim.disk_uuids(vm)[1]
    sim.write(disk, 100, b"keep me")
    snap = _snap(api, vm)
    sim.write(disk, 5000, b"later")
    api.mutate("DELETE", f"/VirDomainBlockDevice/{disk}")
    assert disk not in [b["uuid"] for b in sim.vm_record(vm)["blockDevs"]]
    assert sim.read_snapshot(snap, disk, 100, 7) == b"keep me"
    diff = api.post(
        f"/VirDomainBlockDevice/{disk}/snapDiff", {"snapshotSerialFrom": 0, "snapshotSerialTo": 1}
    )
    assert diff.json() == [{"lower": 100, "upper": 107}]
    clone = api.mutate(
        "POST",
        f"/VirDomainBlockDevice/{disk}/clone",
        {
            "snapUUID": snap,
            "template": {"virDomainUUID": sim.worker_vm_uuid, "type": "VIRTIO_DISK"},
        },
    )["createdUUID"]
    dev = sim.device_root / "disk" / "by-id" / f"virtio-{clone[:20]}"
    assert dev.read_bytes()[100:107] == b"keep me"


def test_failed_snapshot_task_reports_a_placeholder_message(sim: Simulator, api: Api) -> None:
    vm = sim.create_vm("web01", [MIB])
    sim.faults.fail_snapshot(vm)
    task = api.wait(api.post("/VirDomainSnapshot", {"domainUUID": vm, "replication": False}))
    assert task["state"] == "ERROR"
    assert "%@" in task["formattedMessage"] and "web01" in task["messageParameters"]
    expected = {
        "taskTag",
        "progressPercent",
        "state",
        "formattedDescription",
        "descriptionParameters",
        "formattedMessage",
        "messageParameters",
        "objectUUID",
        "created",
        "modified",
        "completed",
        "sessionID",
        "nodeUUIDs",
    }
    assert set(task) == expected
    assert sim.snapshots(vm) == [] and sim.vm_record(vm)["snapUUIDs"] == []


def test_deleting_a_vm_deletes_its_snapshots(sim: Simulator, api: Api) -> None:
    vm = sim.create_vm("web01", [MIB])
    _snap(api, vm)
    api.mutate("DELETE", f"/VirDomain/{vm}")
    assert sim.snapshots() == []
