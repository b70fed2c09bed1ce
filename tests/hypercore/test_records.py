"""Records are built from API dicts in one place and tolerate missing fields."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from hcbak.hypercore.records import (
    VM,
    Snapshot,
    Task,
    UpdateStatus,
    VirtualDisk,
    render_message,
    split_tags,
)

VM_DICT: dict[str, Any] = {
    "uuid": "vm-1",
    "name": "web01",
    "description": "front end",
    "tags": "prod, backup-nightly,,",
    "mem": 2 << 30,
    "numVCPU": 2,
    "machineType": "scale-uefi-tpm-9.3",
    "state": "RUNNING",
    "blockDevs": [
        {
            "uuid": "d-1",
            "type": "VIRTIO_DISK",
            "capacity": 1 << 30,
            "slot": 0,
            "cacheMode": "WRITETHROUGH",
            "name": "",
            "path": "scribe/d-1",
            "disableSnapshotting": False,
        },
        {"uuid": "nv", "type": "NVRAM", "capacity": 540672, "slot": -1},
    ],
    "netDevs": [
        {"uuid": "n-1", "type": "VIRTIO", "vlan": 0, "macAddress": "7C:4C", "connected": True}
    ],
    "bootDevices": ["d-1"],
    "snapUUIDs": ["s-1", "s-2"],
    "sourceVirDomainUUID": "",
}


def test_vm_from_api_maps_every_documented_field() -> None:
    vm = VM.from_api(VM_DICT)
    assert (vm.uuid, vm.name, vm.mem, vm.vcpus, vm.state) == (
        "vm-1",
        "web01",
        2 << 30,
        2,
        "RUNNING",
    )
    assert vm.tags == ["prod", "backup-nightly"]
    assert [d.uuid for d in vm.disks] == ["d-1", "nv"]
    assert vm.disks[0].capacity == 1 << 30 and vm.disks[0].cache_mode == "WRITETHROUGH"
    assert vm.disks[0].is_data_disk and not vm.disks[1].is_data_disk
    assert vm.disks[1].slot == -1
    assert vm.nics[0].mac == "7C:4C"
    assert vm.snap_uuids == ["s-1", "s-2"]
    assert not vm.is_replica
    assert vm.raw["name"] == "web01"


def test_vm_from_empty_dict_gives_neutral_defaults() -> None:
    vm = VM.from_api({})
    assert vm.uuid == "" and vm.disks == [] and vm.tags == [] and vm.mem == 0
    assert not vm.is_replica


def test_replica_is_recognised_by_source_uuid() -> None:
    assert VM.from_api({"sourceVirDomainUUID": "abc"}).is_replica


def test_snapshot_serial_prefers_device_serial_and_says_which() -> None:
    snap = Snapshot.from_api(
        {
            "uuid": "s",
            "domainUUID": "vm-1",
            "label": "hcbak-1",
            "timestamp": 1700000000,
            "type": "USER",
            "replication": False,
            "deviceSnapshots": [{"uuid": "d-1", "serialNumber": 7}, {"uuid": "d-2"}],
            "domain": {**VM_DICT, "snapshotSerialNumber": 9},
        }
    )
    assert snap.serial == 9
    assert snap.serial_for("d-1") == 7 and snap.device("d-1").serial_source == "device"  # type: ignore[union-attr]
    assert snap.serial_for("d-2") == 9 and snap.device("d-2").serial_source == "snapshot"  # type: ignore[union-attr]
    assert snap.serial_for("absent") is None
    assert snap.domain is not None and snap.domain.name == "web01"


def test_snapshot_without_any_serial_reports_none() -> None:
    snap = Snapshot.from_api({"deviceSnapshots": [{"uuid": "d"}], "domain": None})
    assert snap.serial is None and snap.domain is None
    assert snap.serial_for("d") is None and snap.devices[0].serial_source == "none"


def test_virtual_disk_capacity_is_read_from_capacity_bytes_else_capacity() -> None:
    # The vendor's module_utils/virtual_disk.py reads capacityBytes; older notes: capacity.
    assert VirtualDisk.from_api({"capacityBytes": 7, "capacity": 3}).capacity == 7
    assert VirtualDisk.from_api({"capacity": 3}).capacity == 3
    assert VirtualDisk.from_api({}).capacity == 0


def test_records_of_the_vendor_fixture_shapes_build_without_the_keys_hcbak_skips() -> None:
    """A VirDomain as the vendor's tests/unit fixtures give it (test_vm_info.py): null
    operatingSystem/cloudInitData/latestTaskTag, no path/capacity in empty device lists."""
    vm = VM.from_api(
        {
            "uuid": "id",
            "nodeUUID": "node_id",
            "name": "VM-unique-name",
            "tags": "XLAB-test-tag1,XLAB-test-tag2",
            "description": "desc",
            "mem": 42,
            "state": "RUNNING",
            "numVCPU": 2,
            "netDevs": [],
            "blockDevs": [{"uuid": "d", "type": "VIRTIO_DISK"}],
            "cloudInitData": None,
            "bootDevices": [],
            "attachGuestToolsISO": False,
            "operatingSystem": None,
            "latestTaskTag": None,
            "desiredDisposition": None,
            "affinityStrategy": {"strictAffinity": False},
            "snapshotScheduleUUID": "snapshot_schedule_id",
            "machineType": "scale-7.2",
            "sourceVirDomainUUID": "",
            "snapUUIDs": [],
        }
    )
    assert vm.tags == ["XLAB-test-tag1", "XLAB-test-tag2"] and not vm.is_replica
    assert vm.disks[0].capacity == 0 and vm.disks[0].slot == -1 and vm.disks[0].path == ""


def test_virtual_disk_name_is_final_only_after_conversion() -> None:
    assert not VirtualDisk.from_api({"name": "uploading-x.qcow2"}).is_final
    assert not VirtualDisk.from_api({"name": "converting-x.qcow2"}).is_final
    assert VirtualDisk.from_api({"name": "x.qcow2"}).is_final


def test_update_status_accepts_prepare_status_as_a_bare_string() -> None:
    # The vendor's hypercore_version.py: prepareStatus "is sometimes str, sometimes dict".
    done = {"prepareStatus": "COMPLETE", "updateStatus": {"masterState": "COMPLETE"}}
    assert UpdateStatus.from_api(done).idle
    busy = {"prepareStatus": "RUNNING", "updateStatus": {"masterState": "COMPLETE"}}
    assert not UpdateStatus.from_api(busy).idle
    assert not UpdateStatus.from_api({"prepareStatus": 7, "updateStatus": {}}).idle


def test_task_message_is_rendered_from_parameters() -> None:
    task = Task.from_api(
        {
            "taskTag": 12,
            "state": "ERROR",
            "formattedMessage": "Snapshot of %@ failed: %@",
            "messageParameters": ["web01", "disk busy"],
        }
    )
    assert task.tag == "12" and task.failed and task.finished
    assert task.message == "Snapshot of web01 failed: disk busy"


@given(st.lists(st.text(alphabet="ab %", max_size=5), max_size=6), st.lists(st.text(max_size=5)))
def test_render_message_fills_placeholders_in_order(pieces: list[str], params: list[str]) -> None:
    template = "%@".join(pieces)
    out = render_message(template, params)
    holes = max(0, len(pieces) - 1)
    expected = pieces[0] if pieces else ""
    for i, piece in enumerate(pieces[1:]):
        expected += (params[i] if i < len(params) else "%@") + piece
    assert out == expected
    if holes <= len(params) and "%@" not in "".join(pieces) + "".join(params):
        assert "%@" not in out


@given(
    st.one_of(st.none(), st.sampled_from(["COMPLETE", "RUNNING", "", "complete"])),
    st.one_of(st.none(), st.sampled_from(["COMPLETE", "RUNNING", "TERMINATING", "ERROR"])),
)
def test_update_status_is_idle_only_when_both_phases_complete(
    prepare: str | None, master: str | None
) -> None:
    data: dict[str, Any] = {}
    if prepare is not None:
        data["prepareStatus"] = {"state": prepare}
    if master is not None:
        data["updateStatus"] = {"masterState": master}
    status = UpdateStatus.from_api(data)
    assert status.idle == (prepare == "COMPLETE" and master == "COMPLETE")


@given(st.one_of(st.none(), st.integers(), st.text(), st.lists(st.integers())))
def test_update_status_of_garbage_is_not_idle(data: object) -> None:
    assert not UpdateStatus.from_api(data).idle


@given(st.lists(st.text(alphabet="abc ,", max_size=6), max_size=5))
def test_split_tags_never_yields_empty_or_padded_tags(parts: list[str]) -> None:
    tags = split_tags(",".join(parts))
    assert all(t and t == t.strip() and "," not in t for t in tags)
