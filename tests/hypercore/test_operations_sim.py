"""Client operations against the simulator: body shapes, streaming, secrets, timeouts."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import urllib3.util.connection

from hcbak.config import TLSConfig
from hcbak.errors import AuthError, ClusterUnreachableError, NotFoundError, TransportError
from hcbak.hypercore.client import HyperCoreClient, SizedStream
from hcbak.hypercore.failover import NodePool
from hcbak.hypercore.tls import fetch_fingerprint
from hcbak.secrets import Secret

from .conftest import CANARY, make_cluster, refused_address
from .simfix import idle_connections, requests_to, sim_client, sim_cluster


def test_clone_keeps_disk_id_and_appears_on_the_worker(sim: Any) -> None:
    vm_uuid = sim.create_vm("web01", [4 << 20])
    disk = sim.disk_uuids(vm_uuid)[0]
    sim.write(disk, 4096, b"hello")
    hc = sim_client(sim)
    snap = hc.create_snapshot(vm_uuid, "hcbak-clone")
    clone = hc.clone_snapshot_disk(disk, snap.uuid, sim.worker_vm_uuid, 4 << 20)
    worker = sim.vm_record(sim.worker_vm_uuid)
    assert clone in [d["uuid"] for d in worker["blockDevs"]]
    body = requests_to(sim, "POST", f"/rest/v1/VirDomainBlockDevice/{disk}/clone")[0][3]
    assert body["options"]["regenerateDiskID"] is False and body["snapUUID"] == snap.uuid
    device = Path(sim.device_root) / "disk" / "by-id" / f"virtio-{clone[:20]}"
    assert device.read_bytes()[4096:4101] == b"hello"
    hc.delete_block_device(clone)
    assert not device.exists()
    hc.delete_block_device(clone)  # already gone: not an error
    hc.logout()


def test_snap_diff_returns_written_intervals(sim: Any) -> None:
    vm_uuid = sim.create_vm("web01", [4 << 20])
    disk = sim.disk_uuids(vm_uuid)[0]
    hc = sim_client(sim)
    base = hc.create_snapshot(vm_uuid, "a")
    sim.write(disk, 1 << 20, b"x" * 10)
    new = hc.create_snapshot(vm_uuid, "b")
    diff = hc.snap_diff(disk, base.serial_for(disk) or 0, new.serial_for(disk) or 0)
    assert diff == [(1 << 20, (1 << 20) + 10)]
    hc.logout()


def test_upload_streams_exact_length_then_attach_keeps_disk_id(sim: Any) -> None:
    hc = sim_client(sim)
    payload = bytes(range(256)) * 4096  # 1 MiB raw image
    chunks = (payload[i : i + 65536] for i in range(0, len(payload), 65536))
    vd = hc.upload_virtual_disk("restore-1.img", len(payload), chunks)
    assert hc.get_virtual_disk(vd).is_final
    vm_uuid = hc.create_vm({"name": "restored", "mem": 1 << 30, "numVCPU": 1, "netDevs": []})
    dev = hc.attach_virtual_disk(vd, vm_uuid, "VIRTIO_DISK", len(payload), 0)
    attach_body = requests_to(sim, "POST", f"/rest/v1/VirtualDisk/{vd}/attach")[0][3]
    assert attach_body["options"]["regenerateDiskID"] is False
    assert attach_body["template"]["slot"] == 0
    assert sim.read_live(dev, 0, len(payload)) == payload
    hc.delete_virtual_disk(vd)
    hc.vm_action(vm_uuid, "START")
    assert hc.get_vm(vm_uuid).state == "RUNNING"
    hc.update_vm(vm_uuid, {"description": "restored by hcbak"})
    hc.vm_action(vm_uuid, "STOP")
    hc.delete_vm(vm_uuid)
    with pytest.raises(NotFoundError):
        hc.get_vm(vm_uuid)
    hc.logout()


def test_upload_producer_with_wrong_length_is_refused() -> None:
    with pytest.raises(TransportError, match="yielded 3 bytes, announced 4"):
        list(SizedStream(iter([b"abc"]), 4))
    with pytest.raises(TransportError, match="more than the announced 2"):
        list(SizedStream(iter([b"abc"]), 2))
    assert len(SizedStream(iter([]), 7)) == 7


def test_find_vm_by_name_or_uuid_and_missing_is_not_found(sim: Any) -> None:
    vm_uuid = sim.create_vm("web01", [1 << 20])
    hc = sim_client(sim)
    assert hc.find_vm("web01").uuid == vm_uuid
    assert hc.find_vm(vm_uuid).name == "web01"
    with pytest.raises(NotFoundError):
        hc.find_vm("nope")
    hc.logout()


def test_every_connection_of_a_workflow_has_connect_and_read_timeouts(
    sim: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    vm_uuid = sim.create_vm("web01", [1 << 20])
    connects: list[Any] = []
    # urllib3 opens every socket of the client through this function
    real_connect = urllib3.util.connection.create_connection

    def recording_connect(address: Any, timeout: Any = None, *args: Any, **kw: Any) -> Any:
        connects.append(timeout)
        return real_connect(address, timeout, *args, **kw)

    monkeypatch.setattr(urllib3.util.connection, "create_connection", recording_connect)
    hc = sim_client(sim)
    read_timeouts: list[Any] = []
    for node in hc.pool.connections.values():

        def checked(*args: Any, _request: Any = node.request, **kw: Any) -> Any:
            answer = _request(*args, **kw)
            read_timeouts.extend(c.sock.gettimeout() for c in idle_connections(hc.pool))
            return answer

        monkeypatch.setattr(node, "request", checked)
    snap = hc.create_snapshot(vm_uuid, "t")
    hc.update_status()
    hc.delete_snapshot(snap.uuid)
    hc.logout()
    assert connects and all(t == 1.0 for t in connects), connects
    assert len(read_timeouts) >= 5 and all(t == 1.0 for t in read_timeouts), read_timeouts


def test_wrong_password_error_and_logs_never_show_it(
    sim: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cfg = sim_cluster(sim)
    client = HyperCoreClient(cfg, Secret(CANARY))
    with pytest.raises(AuthError) as info:
        client.login()
    assert "refused the login" in str(info.value)
    for text in (str(info.value), repr(info.value), repr(cfg), repr(client.__dict__), caplog.text):
        assert CANARY not in text
    assert caplog.text  # debug logging did run


def test_fetch_fingerprint_matches_the_node_certificate(sim: Any) -> None:
    assert fetch_fingerprint(sim.node_addresses[2], timeout=2) == sim.fingerprints[2]
    with pytest.raises(ClusterUnreachableError):
        fetch_fingerprint(refused_address(), timeout=1)


def test_insecure_mode_warns_on_every_client(sim: Any) -> None:
    warnings: list[str] = []
    cfg = sim_cluster(sim, tls=TLSConfig(insecure=True))
    for _ in range(2):
        client = HyperCoreClient(cfg, cfg.password.resolve(), warn=warnings.append)
        client.login()
        client.logout()
    assert len(warnings) == 2 and "NOT verified" in warnings[0]


def test_discovered_node_ips_are_added_only_when_their_host_is_new() -> None:
    pins = {"127.0.0.1:9001": "ab" * 32}
    pool = NodePool(
        "lab",
        ["127.0.0.1:9001"],
        TLSConfig(fingerprints=pins),
        connect_timeout=1,
        read_timeout=1,
        rounds=1,
    )
    # 127.0.0.1 is known (with its port); 10.9.9.9 has no pin, so it could not be verified
    assert pool.add_discovered(["127.0.0.1", "10.9.9.9"]) == []
    open_pool = NodePool(
        "lab",
        ["127.0.0.1:9001"],
        TLSConfig(insecure=True),
        connect_timeout=1,
        read_timeout=1,
        rounds=1,
    )
    assert open_pool.add_discovered(["127.0.0.1", "10.9.9.9"]) == ["10.9.9.9"]
    assert open_pool.addresses == ["127.0.0.1:9001", "10.9.9.9"]


def test_session_discovers_nodes_without_duplicating_configured_ones(sim: Any) -> None:
    cfg = make_cluster(list(sim.node_addresses), user=sim.admin[0], password=sim.admin[1])
    client = HyperCoreClient(cfg, cfg.password.resolve())
    client.login()
    assert client.discover_nodes() == []
    assert client.pool.addresses == list(sim.node_addresses)
    client.logout()
