"""Block device clone (worker hot-add), snapDiff over REST, uploads and attach."""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import ssl
import struct
import subprocess
import time
from pathlib import Path

import pytest
import requests

from hcbak.sim import Simulator

from .helpers import Api

MIB = 1 << 20


def _snap(api: Api, vm: str) -> str:
    body = {"domainUUID": vm, "label": "l", "replication": False}
    return str(api.mutate("POST", "/VirDomainSnapshot", body)["createdUUID"])


def _clone(api: Api, sim: Simulator, disk: str, snap: str, **extra: object) -> str:
    template = {"virDomainUUID": sim.worker_vm_uuid, "type": "VIRTIO_DISK", **extra}
    body = {"snapUUID": snap, "options": {"regenerateDiskID": False}, "template": template}
    return str(api.mutate("POST", f"/VirDomainBlockDevice/{disk}/clone", body)["createdUUID"])


def _device(sim: Simulator, disk_uuid: str) -> Path:
    return sim.device_root / "disk" / "by-id" / f"virtio-{disk_uuid[:20]}"


def test_snap_diff_over_rest_returns_written_intervals(sim: Simulator, api: Api) -> None:
    vm = sim.create_vm("web01", [4 * MIB])
    disk = sim.disk_uuids(vm)[0]
    sim.write(disk, 0, b"a" * 10)
    _snap(api, vm)
    for off in (3 * MIB, MIB, MIB + 5):
        sim.write(disk, off, b"b" * 10)
    _snap(api, vm)
    sim.write(disk, 2 * MIB, b"c")

    def diff(a: int, b: int) -> object:
        body = {"snapshotSerialFrom": a, "snapshotSerialTo": b}
        return api.post(f"/VirDomainBlockDevice/{disk}/snapDiff", body).json()

    assert diff(1, 2) == [
        {"lower": MIB, "upper": MIB + 15},
        {"lower": 3 * MIB, "upper": 3 * MIB + 10},
    ]
    assert diff(2, 0) == [{"lower": 2 * MIB, "upper": 2 * MIB + 1}]
    assert diff(0, 1) == [{"lower": 0, "upper": 10}]
    assert (
        api.post(
            f"/VirDomainBlockDevice/{disk}/snapDiff",
            {"snapshotSerialFrom": 9, "snapshotSerialTo": 0},
        ).status_code
        == 400
    )
    assert (
        api.post(
            f"/VirDomainBlockDevice/{disk}/snapDiff",
            {"snapshotSerialFrom": 2, "snapshotSerialTo": 1},
        ).status_code
        == 400
    )
    assert (
        api.post(f"/VirDomainBlockDevice/{disk}/snapDiff", {"snapshotSerialFrom": "1"}).status_code
        == 400
    )


def test_snap_diff_from_a_deleted_snapshot_is_400(sim: Simulator, api: Api) -> None:
    vm = sim.create_vm("web01", [MIB])
    disk = sim.disk_uuids(vm)[0]
    first = _snap(api, vm)
    _snap(api, vm)
    api.mutate("DELETE", f"/VirDomainSnapshot/{first}")
    body = {"snapshotSerialFrom": 1, "snapshotSerialTo": 0}
    assert api.post(f"/VirDomainBlockDevice/{disk}/snapDiff", body).status_code == 400


def test_clone_of_unchanged_disk_shares_the_frozen_inode(sim: Simulator, api: Api) -> None:
    vm = sim.create_vm("web01", [2 * MIB])
    disk = sim.disk_uuids(vm)[0]
    sim.fill(disk, seed=1)
    snap = _snap(api, vm)
    clone = _clone(api, sim, disk, snap)
    dev = _device(sim, clone)
    live = sim.state_dir / "disks" / f"{disk}.img"
    assert os.stat(dev).st_ino == os.stat(live).st_ino  # no copy was made
    before = dev.read_bytes()
    sim.write(disk, 0, b"guest keeps writing")
    assert dev.read_bytes() == before  # the clone kept the frozen bytes
    assert os.stat(dev).st_ino != os.stat(live).st_ino


def test_clone_records_regenerate_disk_id_and_drops_template_name(sim: Simulator, api: Api) -> None:
    vm = sim.create_vm("web01", [MIB])
    disk = sim.disk_uuids(vm)[0]
    snap = _snap(api, vm)
    body = {
        "snapUUID": snap,
        "template": {"virDomainUUID": sim.worker_vm_uuid, "type": "VIRTIO_DISK", "name": "x"},
    }
    default = api.mutate("POST", f"/VirDomainBlockDevice/{disk}/clone", body)["createdUUID"]
    explicit = _clone(api, sim, disk, snap)
    devices = {d["uuid"]: d for d in sim.block_devices()}
    assert devices[default]["regenerateDiskID"] is True
    assert devices[explicit]["regenerateDiskID"] is False
    assert api.get(f"/VirDomainBlockDevice/{default}").json()[0]["name"] == ""
    assert devices[default]["vm"] == sim.worker_vm_uuid


def test_clone_to_a_larger_capacity_keeps_content_and_rejects_smaller(
    sim: Simulator, api: Api
) -> None:
    vm = sim.create_vm("web01", [MIB])
    disk = sim.disk_uuids(vm)[0]
    sim.write(disk, MIB - 3, b"end")
    snap = _snap(api, vm)
    big = _clone(api, sim, disk, snap, capacity=2 * MIB)
    data = _device(sim, big).read_bytes()
    assert len(data) == 2 * MIB and data[MIB - 3 : MIB] == b"end"
    body = {"snapUUID": snap, "template": {"virDomainUUID": sim.worker_vm_uuid, "capacity": 1}}
    assert api.post(f"/VirDomainBlockDevice/{disk}/clone", body).status_code == 400


def test_clone_with_older_snapshotUUID_field_is_accepted(sim: Simulator, api: Api) -> None:
    vm = sim.create_vm("web01", [MIB])
    disk = sim.disk_uuids(vm)[0]
    snap = _snap(api, vm)
    body = {"snapshotUUID": snap, "template": {"virDomainUUID": sim.worker_vm_uuid}}
    created = api.mutate("POST", f"/VirDomainBlockDevice/{disk}/clone", body)["createdUUID"]
    assert _device(sim, created).exists()


def test_clone_onto_a_non_worker_vm_has_no_device_file(sim: Simulator, api: Api) -> None:
    vm = sim.create_vm("web01", [MIB])
    other = sim.create_vm("other", [])
    disk = sim.disk_uuids(vm)[0]
    body = {"snapUUID": _snap(api, vm), "template": {"virDomainUUID": other}}
    created = api.mutate("POST", f"/VirDomainBlockDevice/{disk}/clone", body)["createdUUID"]
    assert not _device(sim, created).exists()
    assert sim.disk_uuids(other) == [created]


def _upload(api: Api, name: str, data: bytes) -> requests.Response:
    return api.call(
        "PUT",
        f"/VirtualDisk/upload?filename={name}&filesize={len(data)}",
        data=data,
        headers={"Content-Type": "application/octet-stream"},
    )


def test_raw_upload_then_attach_with_recorded_options(sim: Simulator, api: Api) -> None:
    vm = sim.create_vm("restored", [])
    data = b"\x00" * MIB + b"payload".ljust(MIB, b"!")
    sim.faults.task_delay(0.2)
    resp = _upload(api, "disk0.img", data)
    vd = resp.json()["createdUUID"]
    assert api.get(f"/VirtualDisk/{vd}").json()[0]["name"] == "converting-disk0.img"
    api.wait(resp)
    sim.faults.task_delay(0)
    rec = api.get(f"/VirtualDisk/{vd}").json()[0]
    assert rec["name"] == "disk0.img" and rec["capacityBytes"] == 2 * MIB
    body = {
        "options": {"regenerateDiskID": False, "readOnly": False},
        "template": {"virDomainUUID": vm, "type": "VIRTIO_DISK", "capacity": 2 * MIB, "slot": 0},
    }
    disk = api.mutate("POST", f"/VirtualDisk/{vd}/attach", body)["createdUUID"]
    assert sim.read_live(disk, MIB, 7) == b"payload"
    assert {d["uuid"]: d for d in sim.block_devices()}[disk]["regenerateDiskID"] is False
    assert sim.vm_record(vm)["blockDevs"][0]["slot"] == 0
    resp = api.delete(f"/VirtualDisk/{vd}")
    assert isinstance(resp.json()["taskTag"], int)
    api.wait(resp)
    assert api.get(f"/VirtualDisk/{vd}").json() == []
    assert sim.read_live(disk, MIB, 7) == b"payload"  # the attached disk is independent


def test_attach_without_options_regenerates_disk_id(sim: Simulator, api: Api) -> None:
    vm = sim.create_vm("restored", [])
    resp = _upload(api, "d.img", b"x" * 4096)
    api.wait(resp)
    vd = resp.json()["createdUUID"]
    disk = api.mutate("POST", f"/VirtualDisk/{vd}/attach", {"template": {"virDomainUUID": vm}})[
        "createdUUID"
    ]
    assert {d["uuid"]: d for d in sim.block_devices()}[disk]["regenerateDiskID"] is True


def test_upload_name_is_uploading_while_the_body_streams(sim: Simulator, api: Api) -> None:
    host, port = sim.node_addresses[0].split(":")
    ctx = ssl.create_default_context(cafile=str(sim.cert_paths[0]))
    conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=10)
    token = base64.b64encode(":".join(sim.admin).encode()).decode()
    conn.putrequest("PUT", "/rest/v1/VirtualDisk/upload?filename=s.img&filesize=8192")
    conn.putheader("Authorization", f"Basic {token}")
    conn.putheader("Content-Length", "8192")
    conn.endheaders()
    conn.send(b"a" * 4096)
    deadline = time.monotonic() + 5
    while not sim.virtual_disks() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [v["name"] for v in sim.virtual_disks()] == ["uploading-s.img"]
    conn.send(b"b" * 4096)
    resp = conn.getresponse()
    assert resp.status == 200
    tag = json.loads(resp.read())["taskTag"]
    conn.close()
    sim.wait_idle()
    assert sim.task(tag)["state"] == "COMPLETE"  # type: ignore[index]
    assert [v["name"] for v in sim.virtual_disks()] == ["s.img"]


def test_chunked_upload_is_rejected_with_400(sim: Simulator, api: Api) -> None:
    resp = api.call(
        "PUT", "/VirtualDisk/upload?filename=c.img&filesize=8", data=iter([b"abcd", b"efgh"])
    )
    assert resp.request.headers.get("Transfer-Encoding") == "chunked"
    assert resp.status_code == 400
    assert sim.virtual_disks() == []


def test_upload_with_content_length_not_matching_filesize_is_400(sim: Simulator, api: Api) -> None:
    resp = api.call("PUT", "/VirtualDisk/upload?filename=c.img&filesize=9", data=b"12345678")
    assert resp.status_code == 400
    assert api.call("PUT", "/VirtualDisk/upload?filesize=8", data=b"12345678").status_code == 400


def test_dropped_upload_leaves_no_virtual_disk(sim: Simulator, api: Api) -> None:
    sim.faults.fail_upload_after(MIB)
    with pytest.raises(requests.ConnectionError):
        _upload(api, "big.img", os.urandom(4 * MIB))
    assert sim.virtual_disks() == []
    assert _upload(api, "ok.img", b"x" * 100).status_code == 200  # the fault is one-shot


def test_unsupported_format_ends_the_task_in_error(sim: Simulator, api: Api) -> None:
    task = api.wait(_upload(api, "disk.vmdk", b"KDMV" + bytes(508)))
    assert task["state"] == "ERROR" and "disk.vmdk" in task["messageParameters"]


def _qcow2_v2(content: dict[int, bytes], size: int, cluster_bits: int = 16) -> bytes:
    """A minimal hand-built qcow2 v2: header, one L1 entry, one L2 table, data."""
    cluster = 1 << cluster_bits
    l1_off, l2_off, data_off = cluster, 2 * cluster, 3 * cluster
    l2 = bytearray(cluster)
    blobs = b""
    for i, (index, data) in enumerate(sorted(content.items())):
        struct.pack_into(">Q", l2, 8 * index, (data_off + i * cluster) | (1 << 63))
        blobs += data.ljust(cluster, b"\0")
    header = struct.pack(
        ">4sIQIIQIIQQIIQ", b"QFI\xfb", 2, 0, 0, cluster_bits, size, 0, 1, l1_off, 0, 0, 0, 0
    )
    l1 = struct.pack(">Q", l2_off | (1 << 63))
    return header.ljust(cluster, b"\0") + l1.ljust(cluster, b"\0") + bytes(l2) + blobs


def test_qcow2_v2_upload_is_converted_cluster_by_cluster(sim: Simulator, api: Api) -> None:
    image = _qcow2_v2({0: b"first", 3: b"fourth"}, size=8 << 16)
    resp = _upload(api, "d.qcow2", image)
    assert api.wait(resp)["state"] == "COMPLETE"
    vd = api.get(f"/VirtualDisk/{resp.json()['createdUUID']}").json()[0]
    assert vd["capacityBytes"] == 8 << 16
    vm = sim.create_vm("r", [])
    disk = api.mutate(
        "POST", f"/VirtualDisk/{vd['uuid']}/attach", {"template": {"virDomainUUID": vm}}
    )["createdUUID"]
    assert sim.read_live(disk, 0, 5) == b"first"
    assert sim.read_live(disk, 3 << 16, 6) == b"fourth"
    assert sim.read_live(disk, 1 << 16, 16) == bytes(16)


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img not installed")
def test_qcow2_v3_made_by_qemu_img_round_trips(sim: Simulator, api: Api, tmp_path: Path) -> None:
    raw = tmp_path / "src.img"
    with open(raw, "wb") as f:
        f.truncate(3 * MIB)
        f.seek(MIB + 123)
        f.write(os.urandom(70000))
    qcow = tmp_path / "src.qcow2"
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-o", "compat=1.1", raw, qcow],
        check=True,
    )
    resp = _upload(api, "src.qcow2", qcow.read_bytes())
    assert api.wait(resp)["state"] == "COMPLETE"
    vm = sim.create_vm("r", [])
    vd = resp.json()["createdUUID"]
    disk = api.mutate("POST", f"/VirtualDisk/{vd}/attach", {"template": {"virDomainUUID": vm}})[
        "createdUUID"
    ]
    out = tmp_path / "out.img"
    sim.disk_image(disk, out)
    assert out.read_bytes() == raw.read_bytes()


def test_bad_qcow2_ends_the_task_in_error(sim: Simulator, api: Api) -> None:
    task = api.wait(_upload(api, "bad.qcow2", b"QFI\xfb" + bytes(200)))
    assert task["state"] == "ERROR"
    assert sim.virtual_disks() == []
