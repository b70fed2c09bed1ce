"""Fault injection: node down/hang/TLS/502, injected 500s, tasks, update status, control."""

from __future__ import annotations

import time

import pytest
import requests

from hcbak.sim import Simulator

from .helpers import Api

MIB = 1 << 20


def test_node_down_refuses_connections_and_recovers(sim: Simulator) -> None:
    api0, api1 = Api(sim, 0), Api(sim, 1)
    assert api0.get("/Cluster").status_code == 200  # keep-alive connection open
    sim.faults.node_down(0)
    with pytest.raises(requests.ConnectionError, match=r"(?i)refused|reset|aborted"):
        api0.get("/Cluster", timeout=3)
    with pytest.raises(requests.ConnectionError, match=r"(?i)refused"):
        Api(sim, 0).get("/Cluster", timeout=3)
    assert api1.get("/Cluster").status_code == 200
    sim.faults.node_ok(0)
    assert Api(sim, 0).get("/Cluster").status_code == 200


def test_node_hang_accepts_but_never_answers_until_released(sim: Simulator) -> None:
    sim.faults.node_hang(1)
    start = time.monotonic()
    # The TLS handshake never completes, so urllib3 reports it as a timeout.
    with pytest.raises(requests.Timeout):
        Api(sim, 1).get("/Cluster", timeout=(0.3, 0.3))
    assert time.monotonic() - start < 2
    sim.faults.node_ok(1)
    assert Api(sim, 1).get("/Cluster").status_code == 200


def test_hanging_node_does_not_delay_stop(tmp_path: object) -> None:
    from pathlib import Path

    with Simulator(Path(str(tmp_path)) / "s", nodes=1) as s:
        s.faults.node_hang(0)
        with pytest.raises(requests.Timeout):
            Api(s, 0).get("/Cluster", timeout=(0.2, 0.2))
        start = time.monotonic()
    assert time.monotonic() - start < 2


def test_tls_error_breaks_the_handshake(sim: Simulator) -> None:
    sim.faults.node_tls_error(2)
    with pytest.raises(requests.ConnectionError):  # SSLError is a ConnectionError
        Api(sim, 2).get("/Cluster", timeout=3)
    sim.faults.node_ok(2)
    assert Api(sim, 2).get("/Cluster").status_code == 200


def test_tls_cert_mode_presents_another_certificate(sim: Simulator) -> None:
    sim.faults.node_tls_error(0, mode="cert")
    with pytest.raises(requests.exceptions.SSLError, match="certificate verify failed"):
        Api(sim, 0).get("/Cluster", timeout=3)


def test_node_502_answers_html(sim: Simulator) -> None:
    sim.faults.node_502(0)
    resp = Api(sim, 0).get("/VirDomain")
    assert resp.status_code == 502
    assert resp.headers["Content-Type"].startswith("text/html") and "<html>" in resp.text
    assert Api(sim, 1).get("/VirDomain").status_code == 200


def test_error_rate_gives_random_500s(sim: Simulator, api: Api) -> None:
    sim.faults.error_rate(0.5, seed=3)
    codes = [api.get("/Cluster").status_code for _ in range(40)]
    assert set(codes) == {200, 500}
    sim.faults.error_rate(0.0)
    assert all(api.get("/Cluster").status_code == 200 for _ in range(5))


def test_fail_next_hits_only_matching_calls(sim: Simulator, api: Api) -> None:
    vm = sim.create_vm("web01", [MIB])
    sim.faults.fail_next(2, "POST", "/VirDomainSnapshot")
    assert api.get("/VirDomainSnapshot").status_code == 200
    body = {"domainUUID": vm, "replication": False}
    assert [api.post("/VirDomainSnapshot", body).status_code for _ in range(2)] == [500, 500]
    assert api.wait(api.post("/VirDomainSnapshot", body))["state"] == "COMPLETE"


def test_fail_tasks_of_a_kind_end_in_error(sim: Simulator, api: Api) -> None:
    vm = sim.create_vm("web01", [MIB])
    sim.faults.fail_tasks("snapshot")
    task = api.wait(api.post("/VirDomainSnapshot", {"domainUUID": vm}))
    assert task["state"] == "ERROR"
    assert (
        api.wait(api.post("/VirDomain/action", [{"virDomainUUID": vm, "actionType": "STOP"}]))[
            "state"
        ]
        == "COMPLETE"
    )
    sim.faults.fail_tasks(None)
    assert api.wait(api.post("/VirDomainSnapshot", {"domainUUID": vm}))["state"] == "COMPLETE"


def test_slow_tasks_stay_running_for_the_delay(sim: Simulator, api: Api) -> None:
    vm = sim.create_vm("web01", [MIB])
    sim.faults.task_delay(0.5)
    start = time.monotonic()
    api.wait(api.post("/VirDomainSnapshot", {"domainUUID": vm}))
    assert time.monotonic() - start >= 0.45


def test_out_of_space_fails_creates_and_uploads(sim: Simulator, api: Api) -> None:
    vm = sim.create_vm("web01", [MIB])
    sim.faults.out_of_space(True)
    assert api.wait(api.post("/VirDomainSnapshot", {"domainUUID": vm}))["state"] == "ERROR"
    body = {"virDomainUUID": vm, "type": "VIRTIO_DISK", "capacity": MIB}
    assert api.wait(api.post("/VirDomainBlockDevice", body))["state"] == "ERROR"
    resp = api.call("PUT", "/VirtualDisk/upload?filename=a.img&filesize=4", data=b"abcd")
    assert resp.status_code == 500 and "space" in resp.json()["error"]
    sim.faults.out_of_space(False)
    assert api.wait(api.post("/VirDomainSnapshot", {"domainUUID": vm}))["state"] == "COMPLETE"


def _status(sim: Simulator, node: int = 0) -> requests.Response:
    return requests.get(
        sim.node_urls[node] + "/update/update_status.json",
        verify=str(sim.cert_paths[node]),
        timeout=5,
    )


def test_update_status_phases_without_auth(sim: Simulator) -> None:
    never = _status(sim)
    assert never.status_code == 404 and "<html>" in never.text
    sim.faults.update("running")
    doc = _status(sim).json()
    assert doc["prepareStatus"]["state"] == "COMPLETE"
    assert doc["updateStatus"]["masterState"] == "RUNNING"
    sim.faults.update("preparing")
    assert _status(sim).json()["prepareStatus"]["state"] == "RUNNING"
    sim.faults.update("malformed")
    assert "masterState" not in _status(sim).json()["updateStatus"]
    sim.faults.update("complete")
    doc = _status(sim, 2).json()
    assert doc["prepareStatus"]["state"] == doc["updateStatus"]["masterState"] == "COMPLETE"


def test_control_endpoint_requires_the_admin_token(sim: Simulator) -> None:
    url = sim.node_urls[0] + "/sim/fault"
    kw = {"verify": str(sim.cert_paths[0]), "timeout": 5}
    body = {"name": "node_502", "args": [1]}
    assert requests.post(url, json=body, **kw).status_code == 401  # type: ignore[arg-type]
    wrong = {"X-Sim-Admin-Token": "nope"}
    assert requests.post(url, json=body, headers=wrong, **kw).status_code == 403  # type: ignore[arg-type]
    assert requests.post(url, json=body, auth=sim.admin, **kw).status_code == 401  # type: ignore[arg-type]
    assert Api(sim, 1).get("/Cluster").status_code == 200
    ok = {"X-Sim-Admin-Token": sim.admin_token}
    assert requests.post(url, json=body, headers=ok, **kw).status_code == 200  # type: ignore[arg-type]
    assert Api(sim, 1).get("/Cluster").status_code == 502
    bad = {"name": "__init__", "args": []}
    assert requests.post(url, json=bad, headers=ok, **kw).status_code == 400  # type: ignore[arg-type]


def test_control_endpoint_guest_write(sim: Simulator) -> None:
    import base64

    disk = sim.disk_uuids(sim.create_vm("web01", [MIB]))[0]
    body = {"disk": disk, "offset": 10, "data_b64": base64.b64encode(b"hi").decode()}
    resp = requests.post(
        sim.node_urls[0] + "/sim/write",
        json=body,
        headers={"X-Sim-Admin-Token": sim.admin_token},
        verify=str(sim.cert_paths[0]),
        timeout=5,
    )
    assert resp.status_code == 200
    assert sim.read_live(disk, 10, 2) == b"hi"
