"""The client against the simulator's faults (real HTTPS, real sockets, real tasks).

Each test names the failure it survives; timing asserts use the configured timeouts
(1 s) so a client that waits longer than promised fails them.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest

from hcbak.config import TLSConfig
from hcbak.errors import ClusterBusyError, ClusterUnreachableError, TaskFailedError, TLSError
from hcbak.hypercore.client import hypercore_session
from hcbak.hypercore.failover import NodePool, backoff_delay

from .conftest import CANARY
from .simfix import idle_connections, requests_to, sim_client, sim_cluster

TIMEOUT = 1.0


def test_session_logs_in_and_out_and_reads_typed_records(sim: Any) -> None:
    vm_uuid = sim.create_vm("web01", [4 << 20, 2 << 20], tags=("nightly",))
    with hypercore_session(sim_cluster(sim)) as hc:
        assert hc.cluster_info().version
        vm = hc.find_vm("web01")
        assert vm.uuid == vm_uuid and vm.tags == ["nightly"]
        assert [d.uuid for d in vm.disks if d.is_data_disk] == sim.disk_uuids(vm_uuid)
        assert hc.get_vm(vm_uuid).name == "web01"
        assert hc.roles() == ["Admin"]
    assert len(requests_to(sim, "POST", "/rest/v1/login")) == 1
    assert len(requests_to(sim, "POST", "/rest/v1/logout")) == 1


def test_logout_happens_even_when_the_body_raises(sim: Any) -> None:
    with pytest.raises(RuntimeError), hypercore_session(sim_cluster(sim)):
        raise RuntimeError("boom")
    assert len(requests_to(sim, "POST", "/rest/v1/logout")) == 1


def test_node_down_at_start_login_and_calls_use_the_next_node(sim: Any) -> None:
    sim.faults.node_down(0)
    started = time.monotonic()
    with hypercore_session(sim_cluster(sim)) as hc:
        assert any(vm.name == "hcbak-worker" for vm in hc.list_vms())
    assert time.monotonic() - started < 2 * TIMEOUT
    assert not [r for r in sim.requests if r[0] == 0]


def test_node_hanging_mid_run_sequence_completes_via_another_node(sim: Any) -> None:
    vm_uuid = sim.create_vm("web01", [4 << 20])
    hc = sim_client(sim)
    hc.list_vms()
    first = hc.pool.rotation()[0]
    sim.faults.node_hang(sim.node_addresses.index(first))
    started = time.monotonic()
    hc.list_vms()
    snap = hc.create_snapshot(vm_uuid, "hcbak-hang")
    hc.snap_diff(sim.disk_uuids(vm_uuid)[0], 0, snap.serial or 0)
    hc.delete_snapshot(snap.uuid)
    elapsed = time.monotonic() - started
    # one read timeout on the hung node, no backoff needed (another node answered)
    assert elapsed < TIMEOUT + backoff_delay(1) + 1.5, elapsed
    assert hc.pool.rotation()[0] != first
    hc.logout()


def test_502_html_node_is_skipped_for_reads_and_mutations(sim: Any) -> None:
    sim.faults.node_502(0)
    sim.faults.node_502(1)
    hc = sim_client(sim)
    vm_uuid = hc.create_vm({"name": "made", "mem": 1 << 30, "numVCPU": 1, "netDevs": []})
    assert hc.get_vm(vm_uuid).name == "made"
    # a 502 front-end answer means the API never saw the POST: it moved on, once
    assert len([r for r in requests_to(sim, "POST", "/rest/v1/VirDomain") if r[0] == 2]) == 1
    hc.logout()


def test_tls_mismatch_names_the_node_and_both_fingerprints(sim: Any) -> None:
    wrong = "0" * 64
    pins = dict(zip(sim.node_addresses, sim.fingerprints, strict=True))
    pins[sim.node_addresses[0]] = wrong
    cfg = sim_cluster(sim, tls=TLSConfig(fingerprints=pins))
    with pytest.raises(TLSError) as info:
        sim_client(sim, tls=cfg.tls)
    message = str(info.value)
    assert sim.node_addresses[0] in message
    assert wrong in message and sim.fingerprints[0] in message
    assert info.value.exit_code == 4
    assert not requests_to(sim, "POST", "/rest/v1/login"), "password sent past a bad pin"


def test_presented_rogue_certificate_is_a_mismatch_too(sim: Any) -> None:
    sim.faults.node_tls_error(0, mode="cert")
    with pytest.raises(TLSError, match="does not match the pinned fingerprint"):
        sim_client(sim)


def test_broken_handshake_on_one_node_fails_over(sim: Any) -> None:
    sim.faults.node_tls_error(0)
    hc = sim_client(sim)
    assert hc.list_vms()
    hc.logout()


def test_ca_file_verification_works_with_the_node_certificate(sim: Any) -> None:
    hc = sim_client(sim, tls=TLSConfig(ca_file=str(sim.cert_paths[0])))
    hc.pool.addresses[:] = [sim.node_addresses[0]]
    assert hc.cluster_info().name
    hc.logout()


def test_expired_session_logs_in_again_once_and_retries(sim: Any) -> None:
    hc = sim_client(sim)
    sim.faults.expire_sessions()
    assert hc.list_vms()
    assert len(requests_to(sim, "POST", "/rest/v1/login")) == 2
    hc.logout()


def test_task_error_raises_with_the_cluster_message(sim: Any) -> None:
    vm_uuid = sim.create_vm("web01", [4 << 20])
    sim.faults.fail_snapshot(vm_uuid)
    hc = sim_client(sim)
    with pytest.raises(TaskFailedError) as info:
        hc.create_snapshot(vm_uuid, "hcbak-err")
    assert "ERROR" in str(info.value) and "%@" not in str(info.value)
    hc.logout()


def test_burst_of_500s_then_success_for_reads(sim: Any) -> None:
    hc = sim_client(sim, retries=2)
    sim.faults.fail_next(4, method="GET", path_prefix="/rest/v1/VirDomain")
    assert [vm.name for vm in hc.list_vms()] == ["hcbak-worker"]
    assert len(requests_to(sim, "GET", "/rest/v1/VirDomain")) == 5
    hc.logout()


def test_500_on_snapshot_post_checks_the_label_then_posts_once_more(sim: Any) -> None:
    vm_uuid = sim.create_vm("web01", [4 << 20])
    hc = sim_client(sim)
    sim.faults.fail_next(1, method="POST", path_prefix="/rest/v1/VirDomainSnapshot")
    snap = hc.create_snapshot(vm_uuid, "hcbak-500")
    assert [s["label"] for s in sim.snapshots(vm_uuid)] == ["hcbak-500"]
    assert snap.label == "hcbak-500" and snap.replication is False
    hc.logout()


def test_snapshot_is_idempotent_by_label(sim: Any) -> None:
    vm_uuid = sim.create_vm("web01", [4 << 20])
    hc = sim_client(sim)
    a = hc.create_snapshot(vm_uuid, "hcbak-same")
    b = hc.create_snapshot(vm_uuid, "hcbak-same")
    assert a.uuid == b.uuid and len(sim.snapshots(vm_uuid)) == 1
    body = requests_to(sim, "POST", "/rest/v1/VirDomainSnapshot")[0][3]
    assert body["replication"] is False and body["domainUUID"] == vm_uuid
    hc.logout()


def test_all_nodes_down_fails_in_bounded_time_and_says_so(sim: Any) -> None:
    for i in range(3):
        sim.faults.node_down(i)
    cfg = sim_cluster(sim, retries=2)
    started = time.monotonic()
    with pytest.raises(ClusterUnreachableError) as info, hypercore_session(cfg):
        pass
    elapsed = time.monotonic() - started
    assert elapsed < 2.0
    message = str(info.value)
    assert all(f"{a} refused" in message for a in sim.node_addresses)
    assert "in " in message and " s;" in message
    assert CANARY not in message


def test_update_in_progress_waits_then_proceeds(sim: Any) -> None:
    sim.faults.update("running")
    hc = sim_client(sim)
    timer = threading.Timer(0.4, sim.faults.update, args=("complete",))
    timer.start()
    started = time.monotonic()
    waits: list[float] = []
    status = hc.wait_for_update(5.0, poll=0.1, on_wait=lambda s, w: waits.append(w))
    assert status.idle and waits
    assert 0.35 <= time.monotonic() - started < 3
    hc.logout()


def test_a_stopping_run_stops_waiting_for_the_update_at_once(sim: Any) -> None:
    """Ctrl-C/SIGTERM while `job run` waits for an update: the wait ends (the run then
    stops its VMs) instead of keeping the exit waiting for update_wait."""
    sim.faults.update("running")
    hc = sim_client(sim)
    hc.cancel = threading.Event()
    timer = threading.Timer(0.3, hc.cancel.set)
    timer.start()
    started = time.monotonic()
    status = hc.wait_for_update(30.0, poll=10.0)
    assert not status.idle
    assert 0.25 <= time.monotonic() - started < 3, "ended with the cancel, not the poll"
    hc.logout()


def test_update_in_progress_beyond_max_wait_skips_with_reason(sim: Any) -> None:
    sim.faults.update("running")
    hc = sim_client(sim)
    with pytest.raises(ClusterBusyError, match=r"skipped: cluster lab is updating") as info:
        hc.wait_for_update(0.3, poll=0.1)
    assert info.value.exit_code == 4
    hc.logout()


@pytest.mark.parametrize("phase", ["preparing", "error", "malformed"])
def test_update_status_fails_closed(sim: Any, phase: str) -> None:
    sim.faults.update(phase)
    hc = sim_client(sim)
    assert not hc.update_status().idle
    hc.logout()


def test_update_status_unreachable_is_not_idle(sim: Any) -> None:
    hc = sim_client(sim, retries=1)
    for i in range(3):
        sim.faults.node_502(i)
    assert not hc.update_status().idle


def test_never_updated_cluster_is_idle(sim: Any) -> None:
    hc = sim_client(sim)
    assert hc.update_status().idle
    hc.logout()


def test_snapshot_post_whose_response_is_lost_is_not_duplicated(sim: Any) -> None:
    from hcbak.hypercore.client import HyperCoreClient

    from .conftest import make_cluster
    from .lossy_proxy import LossyProxy

    vm_uuid = sim.create_vm("web01", [4 << 20])
    cert = sim.cert_paths[0]
    with LossyProxy(sim.node_addresses[0], cert, cert.with_suffix(".key")) as proxy:
        nodes = [proxy.address, *sim.node_addresses[1:]]
        pins = {proxy.address: sim.fingerprints[0]}
        pins.update(zip(sim.node_addresses[1:], sim.fingerprints[1:], strict=True))
        user, password = sim.admin
        cfg = make_cluster(nodes, user=user, password=password, tls=TLSConfig(fingerprints=pins))
        hc = HyperCoreClient(cfg, cfg.password.resolve())
        hc.login()
        proxy.drop, proxy.drops_left = ("POST", "/rest/v1/VirDomainSnapshot"), 1
        snap = hc.create_snapshot(vm_uuid, "hcbak-lost")
        assert proxy.dropped == ["POST /rest/v1/VirDomainSnapshot"]
        assert snap.label == "hcbak-lost"
        assert [s["label"] for s in sim.snapshots(vm_uuid)] == ["hcbak-lost"]
        assert len(requests_to(sim, "POST", "/rest/v1/VirDomainSnapshot")) == 1
        hc.logout()


def test_parallel_workers_share_one_re_login_after_session_expiry(sim: Any) -> None:
    from concurrent.futures import ThreadPoolExecutor

    hc = sim_client(sim)
    hc.list_vms()
    sim.faults.expire_sessions()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: hc.list_vms(), range(8)))
    assert all(results)
    # the first login plus at most one per racing thread that saw the old session
    assert 2 <= len(requests_to(sim, "POST", "/rest/v1/login")) <= 5
    hc.logout()


def test_a_hung_tls_handshake_is_not_sent_so_a_mutation_moves_on(sim: Any) -> None:
    """The handshake is bounded by the connect timeout and nothing was sent: a
    mutation goes to the next node instead of ending in MaybeProcessedError."""
    vm_uuid = sim.create_vm("web01", [4 << 20])
    cookie = sim_client(sim).pool.session_cookie
    sim.faults.node_hang(0)  # new connections: TCP accepted, no handshake
    cfg = sim_cluster(sim, connect_timeout=0.3, read_timeout=5.0, retries=1)
    pool = NodePool(
        cfg.name, list(sim.node_addresses), cfg.tls, connect_timeout=0.3, read_timeout=5.0, rounds=1
    )
    pool.session_cookie = cookie
    started = time.monotonic()
    resp = pool.send(
        "PATCH", f"/VirDomain/{vm_uuid}", json={"description": "moved on"}, idempotent=False
    )
    elapsed = time.monotonic() - started
    pool.close()
    assert resp.status_code == 200, resp.text
    assert 0.25 < elapsed < 2.0, elapsed  # one connect timeout, not the read timeout
    patches = requests_to(sim, "PATCH", f"/rest/v1/VirDomain/{vm_uuid}")
    assert [r[0] for r in patches] == [1]


def test_an_idle_connection_the_node_closed_is_replaced_before_a_mutation(sim: Any) -> None:
    """Keep-alive sockets go stale when a node restarts its front end; a mutation sent
    on one would end in MaybeProcessedError although the node never saw it."""
    vm_uuid = sim.create_vm("web01", [4 << 20])
    hc = sim_client(sim)
    hc.list_vms()
    node = sim.node_addresses.index(hc.pool.rotation()[0])
    sim.faults.node_tls_error(node)  # drops every open connection of that node...
    sim.faults.node_ok(node)  # ...which then serves normally again
    hc.update_vm(vm_uuid, {"description": "after reconnect"})
    patches = requests_to(sim, "PATCH", f"/rest/v1/VirDomain/{vm_uuid}")
    assert [r[0] for r in patches] == [node]
    hc.logout()


def test_connections_send_without_waiting_for_delayed_acks(sim: Any) -> None:
    """HTTP clients write headers and body separately; with Nagle on, each mutation's
    body waited for the node's delayed ACK (40 ms a call: 2x slower snapshots)."""
    hc = sim_client(sim)
    hc.list_vms()
    idle = idle_connections(hc.pool)
    assert idle, "no kept-alive connection to inspect"
    for conn in idle:
        assert conn.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    hc.logout()
