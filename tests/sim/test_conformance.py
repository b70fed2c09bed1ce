"""Conformance of the simulator with HyperCore as the vendor's own client reads it.

The reference is Scale Computing's Ansible collection (ScaleComputing/
HyperCoreAnsibleCollection, `plugins/module_utils/`), written and tested against real
clusters: a key it reads with `[]` must be in every record, or that client crashes.
The expected shapes are the table "Record shapes" in docs/simulator.md, parsed here,
so the document and the simulator cannot drift apart. Also checked: the GET
conventions and every mutation the collection issues for VMs, disks, NICs,
snapshots, power and replication, each answering a task tag that completes.
"""

from __future__ import annotations

import base64
import re
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hcbak.sim import Simulator
from hcbak.sim.seed import seed_demo

from .helpers import Api

MIB = 1 << 20
DOC = Path(__file__).resolve().parents[2] / "docs" / "simulator.md"
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
BASIC_TYPES = {
    "string": str,
    "integer": int,
    "boolean": bool,
    "object": dict,
    "array": list,
    "null": type(None),
}


def load_table() -> dict[str, dict[str, str]]:
    """docs/simulator.md "Record shapes": shape -> key -> type."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Record shapes", 1)[1].split("\n## ", 1)[0]
    shapes: dict[str, dict[str, str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 6 or cells[0] in ("resource", "---") or set(cells[0]) <= {"-"}:
            continue
        shapes.setdefault(cells[0], {})[cells[1]] = cells[2]
    return shapes


TABLE = load_table()


def type_problems(value: Any, type_text: str, where: str) -> list[str]:
    """Why `value` is not of the table type `type_text` (empty list: it is)."""
    alternatives = [t.strip() for t in type_text.split(" or ")]
    results = [_one_type(value, t, where) for t in alternatives]
    if any(not r for r in results):
        return []
    return results[0] if len(results) == 1 else [f"{where}: {value!r} is not {type_text}"]


def _one_type(value: Any, type_text: str, where: str) -> list[str]:
    if type_text.startswith("array of "):
        if not isinstance(value, list):
            return [f"{where}: {type(value).__name__}, expected {type_text}"]
        item = type_text[len("array of ") :]
        return [p for i, v in enumerate(value) for p in _one_type(v, item, f"{where}[{i}]")]
    if type_text == "uuid":
        ok = isinstance(value, str) and bool(UUID_RE.match(value))
        return [] if ok else [f"{where}: {value!r} is not uuid-shaped"]
    if type_text in TABLE:
        if not isinstance(value, dict):
            return [f"{where}: {type(value).__name__}, expected {type_text}"]
        return shape_problems(type_text, value, where)
    expected = BASIC_TYPES[type_text]
    ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
    return [] if ok else [f"{where}: {type(value).__name__}, expected {type_text}"]


def shape_problems(shape: str, record: dict[str, Any], where: str = "") -> list[str]:
    """Every difference between a record and its rows in the table."""
    where = where or shape
    rows = TABLE[shape]
    problems = [
        f"{where}.{k}: served but not in the table" for k in sorted(set(record) - set(rows))
    ]
    problems += [
        f"{where}.{k}: in the table but not served" for k in sorted(set(rows) - set(record))
    ]
    for key, type_text in rows.items():
        if key in record:
            problems += type_problems(record[key], type_text, f"{where}.{key}")
    return problems


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Simulator, Api, dict[str, str]]]:
    """One simulator holding every kind of record, some made over REST as the vendor
    client makes them (snapshot, cloud-init VM, upload, replication)."""
    with Simulator(tmp_path_factory.mktemp("conf") / "sim", nodes=2, task_delay=0.005) as sim:
        seed_demo(sim, scale=0.05)
        api = Api(sim)
        made: dict[str, str] = {}
        web01 = sim.vm_record("web01")["uuid"]
        snap = api.mutate(
            "POST",
            "/VirDomainSnapshot",
            {"domainUUID": web01, "label": "conf", "type": "USER", "replication": False},
        )
        made["snapshot"] = snap["createdUUID"]
        made["task"] = str(snap["taskTag"])
        dom = {
            "name": "cloud01",
            "description": "",
            "mem": 1 << 30,
            "numVCPU": 1,
            "tags": "",
            "operatingSystem": "os_other",
            "cloudInitData": {"userData": _b64("#cloud-config\n"), "metaData": _b64("")},
            "blockDevs": [{"type": "VIRTIO_DISK", "capacity": MIB, "cacheMode": "WRITETHROUGH"}],
            "netDevs": [{"type": "VIRTIO", "vlan": 0, "connected": True}],
            "bootDevices": [],
        }
        body = {"dom": dom, "options": {"attachGuestToolsISO": False, "machineTypeKeyword": "bios"}}
        made["cloud_vm"] = api.mutate("POST", "/VirDomain", body)["createdUUID"]
        resp = api.call(
            "PUT",
            "/VirtualDisk/upload",
            params={"filename": "conf.img", "filesize": str(MIB)},
            data=bytes(MIB),
            headers={"Content-Type": "application/octet-stream"},
        )
        api.wait(resp)
        made["vdisk"] = resp.json()["createdUUID"]
        conn = api.get("/RemoteClusterConnection").json()[0]["uuid"]
        rep = {"sourceDomainUUID": web01, "connectionUUID": conn, "enable": True}
        made["replication"] = api.mutate("POST", "/VirDomainReplication", rep)["createdUUID"]
        yield sim, api, made


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


LISTS = [
    ("/Cluster", "Cluster"),
    ("/Node", "Node"),
    ("/User", "User"),
    ("/Role", "Role"),
    ("/VirDomain", "VirDomain"),
    ("/VirDomainBlockDevice", "VirDomainBlockDevice"),
    ("/VirDomainNetDevice", "VirDomainNetDevice"),
    ("/VirDomainSnapshot", "VirDomainSnapshot"),
    ("/VirtualDisk", "VirtualDisk"),
    ("/VirDomainReplication", "VirDomainReplication"),
    ("/RemoteClusterConnection", "RemoteClusterConnection"),
]


@pytest.mark.parametrize(("path", "shape"), LISTS, ids=[s for _, s in LISTS])
def test_every_served_record_has_exactly_the_keys_and_types_of_the_table(
    world: tuple[Simulator, Api, dict[str, str]], path: str, shape: str
) -> None:
    _, api, _ = world
    records = api.get(path).json()
    assert isinstance(records, list) and records, f"{path} served no record to check"
    problems = [p for i, r in enumerate(records) for p in shape_problems(shape, r, f"{shape}[{i}]")]
    assert problems == []
    if shape != "Cluster":  # GET /Cluster/{uuid} is not used by anyone
        one = records[-1]
        assert api.get(f"{path}/{one['uuid']}").json() == [one]  # by uuid: a one-element list


def test_task_tag_records_and_the_vm_latest_task_match_the_table(
    world: tuple[Simulator, Api, dict[str, str]],
) -> None:
    sim, api, made = world
    task = api.get(f"/TaskTag/{made['task']}").json()
    assert len(task) == 1 and shape_problems("TaskTag", task[0]) == []
    latest = sim.vm_record("cloud01")["latestTaskTag"]
    assert latest["state"] == "COMPLETE" and shape_problems("TaskTag", latest) == []


def test_the_table_is_well_formed_and_names_a_source_for_every_key() -> None:
    text = DOC.read_text(encoding="utf-8").split("## Record shapes", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    for row in rows[1:]:
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        assert len(cells) == 6 and all(cells), row
    for shape, keys in TABLE.items():
        for key, type_text in keys.items():
            for t in type_text.split(" or "):
                t = t.removeprefix("array of ")
                assert t in BASIC_TYPES or t in TABLE or t == "uuid", (shape, key, t)


# --- one test per discrepancy of issue 18 (each failed before its fix) ---------------
def test_1_vm_records_carry_what_the_vendor_vm_code_reads(sim: Simulator, api: Api) -> None:
    vm = sim.create_vm("web01", [MIB], uefi=True)
    rec = api.get(f"/VirDomain/{vm}").json()[0]
    # module_utils/vm.py VM.from_hypercore: ["affinityStrategy"][...] and friends
    assert rec["affinityStrategy"] == {
        "strictAffinity": False,
        "preferredNodeUUID": "",
        "backupNodeUUID": "",
    }
    assert rec["machineTypeKeyword"] == "uefi" and rec["machineType"] == "scale-uefi-9.3"
    assert rec["operatingSystem"] == "os_other" and rec["attachGuestToolsISO"] is False
    assert rec["cloudInitData"] is None and rec["stats"] == []
    assert rec["latestTaskTag"] == {}  # no task yet
    assert shape_problems("VirDomain", rec) == []


def test_2_missing_objects_are_an_empty_list_and_roles_are_served_by_uuid(api: Api) -> None:
    gone = str(uuidlib.uuid4())
    assert (api.get(f"/VirDomain/{gone}").status_code, api.get(f"/VirDomain/{gone}").json()) == (
        200,
        [],
    )
    role = api.get("/Role").json()[0]
    assert api.get(f"/Role/{role['uuid']}").json() == [role]  # module_utils/role.py


def test_3_nics_are_added_changed_and_removed_like_the_vendor_vm_nic_module(
    sim: Simulator, api: Api
) -> None:
    vm = sim.create_vm("web01", [MIB], nics=1, state="SHUTOFF")
    # ManageVMNics.send_create_nic_request_to_hypercore: Nic.to_hypercore()
    created = api.mutate(
        "POST", "/VirDomainNetDevice", {"vlan": 10, "virDomainUUID": vm, "type": "INTEL_E1000"}
    )["createdUUID"]
    nic = api.get(f"/VirDomainNetDevice/{created}").json()[0]
    assert (nic["vlan"], nic["type"], nic["virDomainUUID"]) == (10, "INTEL_E1000", vm)
    assert re.match(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$", nic["macAddress"])
    assert shape_problems("VirDomainNetDevice", nic) == []
    patch = {"uuid": created, "vlan": 20, "virDomainUUID": vm, "connected": False}
    api.mutate("PATCH", f"/VirDomainNetDevice/{created}", patch)
    nic = api.get(f"/VirDomainNetDevice/{created}").json()[0]
    assert (nic["vlan"], nic["connected"]) == (20, False)
    assert [n["uuid"] for n in sim.vm_record(vm)["netDevs"]][-1] == created
    resp = api.delete(f"/VirDomainNetDevice/{created}")
    assert api.wait(resp)["state"] == "COMPLETE"
    assert api.get(f"/VirDomainNetDevice/{created}").json() == []
    assert len(sim.vm_record(vm)["netDevs"]) == 1
    bad = api.post("/VirDomainNetDevice", {"virDomainUUID": vm, "type": "NE2000"})
    assert bad.status_code == 400


def test_4_virtual_disks_carry_capacity_bytes(sim: Simulator, api: Api) -> None:
    resp = api.call(
        "PUT",
        "/VirtualDisk/upload",
        params={"filename": "d.img", "filesize": str(MIB)},
        data=bytes(MIB),
        headers={"Content-Type": "application/octet-stream"},
    )
    api.wait(resp)
    rec = api.get(f"/VirtualDisk/{resp.json()['createdUUID']}").json()[0]
    assert rec["capacityBytes"] == MIB  # module_utils/virtual_disk.py reads it with []
    assert shape_problems("VirtualDisk", rec) == []


def test_5_vm_create_and_patch_honour_operating_system_and_machine_type_keyword(
    sim: Simulator, api: Api
) -> None:
    dom = {"name": "win", "mem": 1 << 30, "numVCPU": 2, "operatingSystem": "os_windows_server_2012"}
    options = {"attachGuestToolsISO": True, "machineTypeKeyword": "tpm"}
    vm = api.mutate("POST", "/VirDomain", {"dom": dom, "options": options})["createdUUID"]
    rec = api.get(f"/VirDomain/{vm}").json()[0]
    assert rec["operatingSystem"] == "os_windows_server_2012"
    assert (rec["machineType"], rec["machineTypeKeyword"]) == ("scale-uefi-tpm-9.3", "tpm")
    assert rec["attachGuestToolsISO"] is True
    api.mutate("PATCH", f"/VirDomain/{vm}", {"operatingSystem": "os_other"})
    assert api.get(f"/VirDomain/{vm}").json()[0]["operatingSystem"] == "os_other"
    api.mutate("PATCH", f"/VirDomain/{vm}", {"machineType": "scale-8.10"})
    assert api.get(f"/VirDomain/{vm}").json()[0]["machineTypeKeyword"] == "uefi"
    body = {"dom": {"name": "x"}, "options": {"machineTypeKeyword": "pdp11"}}
    assert api.post("/VirDomain", body).status_code == 400


def test_6_task_session_ids_are_uuids_and_replication_is_served(sim: Simulator, api: Api) -> None:
    vm = sim.create_vm("web01", [MIB])
    login = api.post("/login", {"username": sim.admin[0], "password": sim.admin[1]})
    cookie_api = Api(sim, auth=("", ""))
    cookie_api.s.auth = None
    cookie_api.s.headers["Cookie"] = f"sessionID={login.json()['sessionID']}"
    body = {"domainUUID": vm, "label": "s", "type": "USER", "replication": False}
    tag = cookie_api.post("/VirDomainSnapshot", body).json()["taskTag"]
    task = cookie_api.get(f"/TaskTag/{tag}").json()[0]
    assert UUID_RE.match(task["sessionID"])
    assert login.json()["sessionID"] not in str(task)  # never the session secret itself
    replica = sim.create_replica("dr-web01", [MIB])
    assert sim.vm_record(replica)["sourceVirDomainUUID"]
    conns = api.get("/RemoteClusterConnection").json()
    assert len(conns) == 1 and shape_problems("RemoteClusterConnection", conns[0]) == []
    assert api.get("/VirDomainReplication").json() == []  # replicas come in, none go out
    rep = {"sourceDomainUUID": vm, "connectionUUID": conns[0]["uuid"], "enable": True}
    created = api.mutate("POST", "/VirDomainReplication", rep)["createdUUID"]
    assert api.get(f"/VirDomainReplication/{created}").json() == [{"uuid": created, **rep}]
    assert sim.vm_record(vm)["replicationUUIDs"] == [created]
    api.mutate("PATCH", f"/VirDomainReplication/{created}", {"enable": False})
    assert api.get("/VirDomainReplication").json()[0]["enable"] is False


# --- GET conventions -------------------------------------------------------------------
def test_get_conventions_list_for_one_uuid_empty_for_missing_filter_client_side(
    world: tuple[Simulator, Api, dict[str, str]],
) -> None:
    _, api, made = world
    one = api.get(f"/VirDomainSnapshot/{made['snapshot']}").json()
    assert isinstance(one, list) and [s["uuid"] for s in one] == [made["snapshot"]]
    assert api.get(f"/VirDomainSnapshot/{uuidlib.uuid4()}").json() == []
    # The vendor's RestClient.list_records fetches everything and filters itself;
    # the server rejects filters on these resources.
    vm = one[0]["domainUUID"]
    assert api.get(f"/VirDomainSnapshot?domainUUID={vm}").status_code == 400
    mine = [s for s in api.get("/VirDomainSnapshot").json() if s["domainUUID"] == vm]
    assert made["snapshot"] in [s["uuid"] for s in mine]


# --- every mutation the vendor collection issues for VMs, disks, NICs, snapshots, power --
def test_vendor_vm_lifecycle_mutations_all_complete(sim: Simulator, api: Api) -> None:
    """The calls of module_utils/vm.py, disk handling (ManageVMDisks), vm_snapshot.py and
    power (VM.power_action), in the vendor's payload shapes, each a completed task."""
    dom = {
        "name": "life",
        "description": "d",
        "mem": 512 * MIB,
        "numVCPU": 2,
        "tags": "a,b",
        "operatingSystem": "os_other",
        "blockDevs": [
            {
                "type": "VIRTIO_DISK",
                "capacity": MIB,
                "cacheMode": "WRITETHROUGH",
                "uuid": "primaryDrive",
            },
            {"type": "NVRAM", "capacity": 1, "slot": 3},
        ],
        "netDevs": [{"type": "RTL8139", "vlan": 0, "connected": True}],
        "bootDevices": [],
    }
    body = {"dom": dom, "options": {"attachGuestToolsISO": False, "machineTypeKeyword": "uefi"}}
    vm = api.mutate("POST", "/VirDomain", body)["createdUUID"]
    rec = api.get(f"/VirDomain/{vm}").json()[0]
    nvram = next(b for b in rec["blockDevs"] if b["type"] == "NVRAM")
    assert (nvram["slot"], nvram["capacity"]) == (-1, 540672)  # the cluster ignores both
    assert rec["netDevs"][0]["type"] == "RTL8139"
    disk = next(b["uuid"] for b in rec["blockDevs"] if b["type"] == "VIRTIO_DISK")
    # VirDomainBlockDevice: POST (Disk.post_and_patch_payload), PATCH, DELETE
    add = {
        "type": "VIRTIO_DISK",
        "cacheMode": "WRITEBACK",
        "capacity": 2 * MIB,
        "slot": 1,
        "disableSnapshotting": True,
        "tieringPriorityFactor": 4,
        "readOnly": False,
        "virDomainUUID": vm,
    }
    added = api.mutate("POST", "/VirDomainBlockDevice", add)["createdUUID"]
    got = api.get(f"/VirDomainBlockDevice/{added}").json()[0]
    assert (got["disableSnapshotting"], got["tieringPriorityFactor"]) == (True, 4)
    vtpm = {"type": "VTPM", "capacity": MIB, "slot": 7, "virDomainUUID": vm}
    vtpm_uuid = api.mutate("POST", "/VirDomainBlockDevice", vtpm)["createdUUID"]
    assert api.get(f"/VirDomainBlockDevice/{vtpm_uuid}").json()[0]["slot"] == -1
    grow = {
        "capacity": 3 * MIB,
        "cacheMode": "NONE",
        "tieringPriorityFactor": 8,
        "virDomainUUID": vm,
    }
    api.mutate("PATCH", f"/VirDomainBlockDevice/{added}", grow)
    got = api.get(f"/VirDomainBlockDevice/{added}").json()[0]
    assert (got["capacity"], got["cacheMode"], got["tieringPriorityFactor"]) == (3 * MIB, "NONE", 8)
    api.mutate("DELETE", f"/VirDomainBlockDevice/{added}")
    # VirDomain PATCH (vm_params, boot devices)
    patch = {
        "name": "life2",
        "description": "e",
        "tags": "c",
        "mem": MIB * 1024,
        "numVCPU": 4,
        "snapshotScheduleUUID": "",
        "bootDevices": [disk],
    }
    api.mutate("PATCH", f"/VirDomain/{vm}", patch)
    rec = api.get(f"/VirDomain/{vm}").json()[0]
    assert (rec["name"], rec["numVCPU"], rec["bootDevices"]) == ("life2", 4, [disk])
    # Power: VM.power_action sends a list, "cause": "INTERNAL"
    for action, state in (
        ("START", "RUNNING"),
        ("REBOOT", "RUNNING"),
        ("SHUTDOWN", "SHUTOFF"),
        ("START", "RUNNING"),
        ("STOP", "SHUTOFF"),
    ):
        items = [{"virDomainUUID": vm, "actionType": action, "cause": "INTERNAL"}]
        api.mutate("POST", "/VirDomain/action", items)
        assert api.get(f"/VirDomain/{vm}").json()[0]["state"] == state, action
    # Snapshots: vm_snapshot.py create (without retain fields) and delete
    snap_body = {"domainUUID": vm, "label": "v1", "type": "USER", "replication": False}
    snap = api.mutate("POST", "/VirDomainSnapshot", snap_body)["createdUUID"]
    record = api.get(f"/VirDomainSnapshot/{snap}").json()[0]
    assert shape_problems("VirDomainSnapshot", record) == []
    api.mutate("DELETE", f"/VirDomainSnapshot/{snap}")
    assert api.get(f"/VirDomainSnapshot/{snap}").json() == []
    assert shape_problems("VirDomain", api.get(f"/VirDomain/{vm}").json()[0]) == []
    api.mutate("DELETE", f"/VirDomain/{vm}")
    assert api.get(f"/VirDomain/{vm}").json() == []


# --- discrepancies found beyond the list (each failed before its fix) ----------
def test_7_snapshot_create_keeps_retain_timestamps_and_refuses_a_uuid(
    sim: Simulator, api: Api
) -> None:
    vm = sim.create_vm("web01", [MIB])
    body = {"domainUUID": vm, "label": "keep", "type": "USER", "replication": False}
    # module_utils/vm_snapshot.py: `payload.pop("uuid")  # "uuid" is not allowed`
    assert api.post("/VirDomainSnapshot", {**body, "uuid": "x"}).status_code == 400
    retain = {"localRetainUntilTimestamp": 2_000_000_000, "remoteRetainUntilTimestamp": 1}
    snap = api.mutate("POST", "/VirDomainSnapshot", {**body, **retain})["createdUUID"]
    rec = api.get(f"/VirDomainSnapshot/{snap}").json()[0]
    assert {k: rec[k] for k in retain} == retain


def test_8_node_affinity_is_changed_by_patch_like_the_vendor_vm_node_affinity(
    sim: Simulator, api: Api
) -> None:
    vm = sim.create_vm("web01", [MIB])
    nodes = [n["uuid"] for n in api.get("/Node").json()]
    affinity = {"strictAffinity": True, "preferredNodeUUID": nodes[1], "backupNodeUUID": ""}
    api.mutate("PATCH", f"/VirDomain/{vm}", {"affinityStrategy": affinity})
    assert api.get(f"/VirDomain/{vm}").json()[0]["affinityStrategy"] == affinity
    bad = {"affinityStrategy": {**affinity, "backupNodeUUID": str(uuidlib.uuid4())}}
    assert api.call("PATCH", f"/VirDomain/{vm}", json=bad).status_code == 400


def test_9_vm_clone_like_the_vendor_vm_clone_module(sim: Simulator, api: Api) -> None:
    vm = sim.create_vm("web01", [2 * MIB], tags=("keep-not",), uefi=True, cdrom=True)
    disk = sim.disk_uuids(vm)[0]
    sim.write(disk, 4096, b"before")
    snap = api.mutate(
        "POST", "/VirDomainSnapshot", {"domainUUID": vm, "label": "s", "replication": False}
    )["createdUUID"]
    sim.write(disk, 4096, b"after!")
    # from a snapshot (the vendor's path for replicas), with a name and new tags
    body = {"snapUUID": snap, "template": {"name": "web01-clone", "tags": "cloned"}}
    made = api.mutate("POST", f"/VirDomain/{vm}/clone", body)["createdUUID"]
    rec = api.get(f"/VirDomain/{made}").json()[0]
    assert (rec["name"], rec["tags"], rec["machineType"]) == (
        "web01-clone",
        "cloned",
        "scale-uefi-9.3",
    )
    assert [b["type"] for b in rec["blockDevs"]] == ["VIRTIO_DISK", "IDE_CDROM", "NVRAM"]
    assert sim.read_live(rec["blockDevs"][0]["uuid"], 4096, 6) == b"before"
    assert shape_problems("VirDomain", rec) == []
    # from the live VM, keeping MACs as `preserve_mac_address` does
    macs = [{"type": "VIRTIO", "macAddress": "7c:4c:58:00:00:01", "vlan": 3}]
    body = {"template": {"name": "web01-live", "netDevs": macs}}
    live = api.mutate("POST", f"/VirDomain/{vm}/clone", body)["createdUUID"]
    rec = api.get(f"/VirDomain/{live}").json()[0]
    assert sim.read_live(rec["blockDevs"][0]["uuid"], 4096, 6) == b"after!"
    assert [(n["macAddress"], n["vlan"]) for n in rec["netDevs"]] == [("7c:4c:58:00:00:01", 3)]
    sim.write(rec["blockDevs"][0]["uuid"], 4096, b"clone!")  # copy-on-write
    assert sim.read_live(disk, 4096, 6) == b"after!"
    assert api.post(f"/VirDomain/{vm}/clone", {"template": {}}).status_code == 400


def test_10_vm_create_keeps_the_block_device_fields_the_vendor_sends(
    sim: Simulator, api: Api
) -> None:
    bd = {
        "type": "IDE_CDROM",
        "capacity": 0,
        "cacheMode": "WRITETHROUGH",
        "name": "ubuntu.iso",
        "readOnly": True,
        "tieringPriorityFactor": 4,
    }
    dom = {"name": "iso01", "blockDevs": [bd], "netDevs": []}
    vm = api.mutate("POST", "/VirDomain", {"dom": dom, "options": {}})["createdUUID"]
    got = api.get(f"/VirDomain/{vm}").json()[0]["blockDevs"][0]
    assert (got["name"], got["readOnly"], got["tieringPriorityFactor"]) == ("ubuntu.iso", True, 4)


def test_11_snapshot_disk_clone_keeps_what_the_vendor_vm_snapshot_attach_disk_sends(
    sim: Simulator, api: Api
) -> None:
    vm = sim.create_vm("web01", [MIB])
    disk = sim.disk_uuids(vm)[0]
    target = sim.create_vm("other", [], state="SHUTOFF")
    snap = api.mutate(
        "POST", "/VirDomainSnapshot", {"domainUUID": vm, "label": "s", "replication": False}
    )["createdUUID"]
    body = {
        "options": {"regenerateDiskID": True, "readOnly": True},
        "snapUUID": snap,
        "template": {
            "virDomainUUID": target,
            "type": "VIRTIO_DISK",
            "capacity": MIB,
            "slot": 2,
            "disableSnapshotting": True,
            "tieringPriorityFactor": 2,
        },
    }
    made = api.mutate("POST", f"/VirDomainBlockDevice/{disk}/clone", body)["createdUUID"]
    got = api.get(f"/VirDomainBlockDevice/{made}").json()[0]
    assert (got["readOnly"], got["disableSnapshotting"], got["tieringPriorityFactor"]) == (
        True,
        True,
        2,
    )
    assert (got["slot"], got["virDomainUUID"]) == (2, target)


def test_12_a_cdrom_is_not_hot_unplugged_and_a_type_change_needs_the_vm_off(
    sim: Simulator, api: Api
) -> None:
    vm = sim.create_vm("web01", [MIB], cdrom=True, state="RUNNING")
    rec = sim.vm_record(vm)
    cdrom = next(b["uuid"] for b in rec["blockDevs"] if b["type"] == "IDE_CDROM")
    disk = sim.disk_uuids(vm)[0]
    task = api.wait(api.delete(f"/VirDomainBlockDevice/{cdrom}"))
    # the message the vendor's vm.py `_disk_remove_failed_because_vm_running` looks for
    assert (task["state"], task["formattedMessage"]) == (
        "ERROR",
        "Unable to delete block device from VM '%@': Still in use",
    )
    patch = api.call("PATCH", f"/VirDomainBlockDevice/{disk}", json={"type": "SCSI_DISK"})
    assert api.wait(patch)["state"] == "ERROR"
    api.mutate("POST", "/VirDomain/action", [{"virDomainUUID": vm, "actionType": "STOP"}])
    api.mutate("PATCH", f"/VirDomainBlockDevice/{disk}", {"type": "SCSI_DISK"})
    api.mutate("DELETE", f"/VirDomainBlockDevice/{cdrom}")
    types = [b["type"] for b in sim.vm_record(vm)["blockDevs"]]
    assert types == ["SCSI_DISK"]
