"""Response shapes and request rules of the REST API (../shared/hypercore-api.md)."""

from __future__ import annotations

import pytest

from hcbak.sim import Simulator

from .helpers import Api

MIB = 1 << 20


MISSING = [
    f"/{r}/00000000-0000-4000-8000-000000000000"
    for r in (
        "VirDomain",
        "VirDomainBlockDevice",
        "VirDomainNetDevice",
        "VirDomainSnapshot",
        "VirtualDisk",
        "Node",
        "User",
        "Role",
        "VirDomainReplication",
        "RemoteClusterConnection",
        "TaskTag",
    )
]


def test_get_by_uuid_returns_one_element_array(sim: Simulator, api: Api) -> None:
    vm = sim.create_vm("web01", [MIB])
    disk = sim.disk_uuids(vm)[0]
    for path in (f"/VirDomain/{vm}", f"/VirDomainBlockDevice/{disk}"):
        resp = api.get(path)
        assert resp.status_code == 200
        assert isinstance(resp.json(), list) and len(resp.json()) == 1
        assert resp.json()[0]["uuid"] in (vm, disk)


@pytest.mark.parametrize("path", MISSING)
def test_get_of_a_missing_uuid_is_an_empty_array(api: Api, path: str) -> None:
    # The vendor's integration test (tests/integration/targets/api) asserts `[]` for a
    # deleted VM; a dict body would be read by that client as a list of records.
    resp = api.get(path)
    assert (resp.status_code, resp.json()) == (200, [])


def test_fault_missing_404_answers_404_with_an_error_object(sim: Simulator, api: Api) -> None:
    sim.faults.missing_404()
    for path in MISSING[:-1]:  # an unknown task tag stays `[]` (finished)
        resp = api.get(path)
        assert resp.status_code == 404 and "error" in resp.json(), path
    sim.faults.clear()
    assert api.get(MISSING[0]).json() == []


def test_vm_record_embeds_disks_nics_and_matches_python_view(sim: Simulator, api: Api) -> None:
    vm = sim.create_vm("web01", [2 * MIB, MIB], tags=("a", "b"), cdrom=True, uefi=True)
    rec = api.get(f"/VirDomain/{vm}").json()[0]
    assert rec == sim.vm_record("web01")
    assert rec["tags"] == "a,b"
    types = [b["type"] for b in rec["blockDevs"]]
    assert types == ["VIRTIO_DISK", "VIRTIO_DISK", "IDE_CDROM", "NVRAM"]
    nvram = rec["blockDevs"][-1]
    assert nvram["slot"] == -1 and nvram["capacity"] == 540672
    assert [b["slot"] for b in rec["blockDevs"][:2]] == [0, 1]
    assert rec["bootDevices"] == [rec["blockDevs"][0]["uuid"]]
    assert rec["netDevs"][0]["virDomainUUID"] == vm
    assert rec["snapUUIDs"] == [] and rec["sourceVirDomainUUID"] == ""
    assert sim.disk_uuids(vm) == [b["uuid"] for b in rec["blockDevs"][:2]]


@pytest.mark.parametrize(
    "resource",
    [
        "VirDomainSnapshot",
        "VirDomainBlockDevice",
        "VirDomainNetDevice",
        "VirDomainSnapshotSchedule",
    ],
)
def test_query_filters_are_rejected_with_400(api: Api, resource: str) -> None:
    assert api.get(f"/{resource}").status_code == 200
    assert api.get(f"/{resource}?virDomainUUID=x").status_code == 400


def test_vm_list_ignores_query_and_returns_all(sim: Simulator, api: Api) -> None:
    sim.create_vm("web01", [MIB])
    names = {v["name"] for v in api.get("/VirDomain?name=nothing").json()}
    assert names == {"web01", "hcbak-worker"}


def test_ping_is_a_plain_object_without_auth(sim: Simulator) -> None:
    api = Api(sim, auth=("nobody", "wrong"))
    api.s.auth = None
    resp = api.get("/ping")
    assert resp.status_code == 200 and resp.json() == {"status": "Active"}


def test_cluster_and_nodes_tell_version_and_each_node_port(sim: Simulator, api: Api) -> None:
    cluster = api.get("/Cluster").json()
    assert len(cluster) == 1 and {"uuid", "clusterName", "icosVersion"} <= set(cluster[0])
    nodes = api.get("/Node").json()
    assert [n["lanIP"] for n in nodes] == ["127.0.0.1"] * 3
    assert [f"127.0.0.1:{n['simPort']}" for n in nodes] == sim.node_addresses
    assert api.get(f"/Node/{nodes[1]['uuid']}").json() == [nodes[1]]


def test_every_node_serves_the_same_state_with_its_own_certificate(sim: Simulator) -> None:
    vm = sim.create_vm("web01", [MIB])
    for i in range(3):
        assert Api(sim, node=i).get(f"/VirDomain/{vm}").json()[0]["name"] == "web01"
    assert len(set(sim.fingerprints)) == 3
    wrong = Api(sim, node=1)
    wrong.s.verify = str(sim.cert_paths[0])
    with pytest.raises(Exception, match="certificate verify failed"):
        wrong.get("/Cluster")


def test_unknown_resource_404_and_wrong_method_405(api: Api) -> None:
    assert api.get("/NoSuchThing").status_code == 404
    assert api.call("PUT", "/Cluster").status_code == 405


def test_invalid_json_body_is_400(api: Api) -> None:
    resp = api.call(
        "POST", "/VirDomainSnapshot", data=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert resp.status_code == 400


def test_block_device_create_rejects_description_and_creates_without(
    sim: Simulator, api: Api
) -> None:
    vm = sim.create_vm("web01", [MIB])
    body = {"virDomainUUID": vm, "type": "VIRTIO_DISK", "capacity": MIB, "cacheMode": "NONE"}
    assert api.post("/VirDomainBlockDevice", {**body, "description": "x"}).status_code == 400
    created = api.mutate("POST", "/VirDomainBlockDevice", body)["createdUUID"]
    rec = api.get(f"/VirDomainBlockDevice/{created}").json()[0]
    assert rec["virDomainUUID"] == vm and rec["slot"] == 1 and rec["cacheMode"] == "NONE"


def test_vm_create_action_patch_delete_over_rest(sim: Simulator, api: Api) -> None:
    dom = {
        "name": "restored",
        "description": "d",
        "mem": 1 << 30,
        "numVCPU": 2,
        "machineType": "scale-8.10",
        "tags": "x,y",
        "blockDevs": [{"type": "VIRTIO_DISK", "capacity": MIB}],
        "netDevs": [{"type": "VIRTIO", "vlan": 5}],
    }
    vm = api.mutate("POST", "/VirDomain", {"dom": dom, "options": {}})["createdUUID"]
    rec = api.get(f"/VirDomain/{vm}").json()[0]
    assert rec["state"] == "SHUTOFF" and rec["tags"] == "x,y" and rec["netDevs"][0]["vlan"] == 5
    assert rec["blockDevs"][0]["capacity"] == MIB
    api.mutate(
        "POST",
        "/VirDomain/action",
        [{"virDomainUUID": vm, "actionType": "START", "cause": "INTERNAL"}],
    )
    assert api.get(f"/VirDomain/{vm}").json()[0]["state"] == "RUNNING"
    api.mutate("PATCH", f"/VirDomain/{vm}", {"name": "renamed", "tags": "z"})
    assert sim.vm_record(vm)["name"] == "renamed"
    resp = api.delete(f"/VirDomain/{vm}")
    assert isinstance(resp.json()["taskTag"], int)  # quirk: deletes answer an int tag
    api.wait(resp)
    assert api.get(f"/VirDomain/{vm}").json() == []


def test_unknown_task_tag_is_an_empty_array(api: Api) -> None:
    resp = api.get("/TaskTag/999999")
    assert resp.status_code == 200 and resp.json() == []


def test_roles_and_users_list(sim: Simulator, api: Api) -> None:
    roles = {r["name"]: r["uuid"] for r in api.get("/Role").json()}
    assert {"Backup", "VM Create/Edit", "VM Delete", "VM Power Controls"} <= set(roles)
    users = {u["username"]: u for u in api.get("/User").json()}
    backup = users[sim.backup_user[0]]
    assert roles["Backup"] in backup["roleUUIDs"] and roles["Admin"] not in backup["roleUUIDs"]
    assert all("password" not in u for u in users.values())
