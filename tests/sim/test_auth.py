"""Authentication (Basic, session cookie), session expiry, roles and secret hygiene."""

from __future__ import annotations

import requests

from hcbak.sim import Simulator

from .helpers import Api

MIB = 1 << 20


def test_requests_without_or_with_wrong_credentials_get_401(sim: Simulator) -> None:
    anonymous = Api(sim)
    anonymous.s.auth = None
    assert anonymous.get("/VirDomain").status_code == 401
    assert Api(sim, auth=("admin", "wrong")).get("/VirDomain").status_code == 401


def test_login_cookie_session_then_logout_ends_it(sim: Simulator) -> None:
    api = Api(sim)
    api.s.auth = None
    user, password = sim.admin
    resp = api.post("/login", {"username": user, "password": password, "useOIDC": False})
    assert resp.status_code == 200
    sid = resp.json()["sessionID"]
    assert api.s.cookies.get("sessionID") == sid
    assert api.get("/VirDomain").status_code == 200
    assert api.post("/logout").status_code == 200
    assert api.get("/VirDomain").status_code == 401


def test_login_with_wrong_password_is_401(sim: Simulator) -> None:
    api = Api(sim)
    api.s.auth = None
    resp = api.post("/login", {"username": "admin", "password": "nope", "useOIDC": False})
    assert resp.status_code == 401 and "sessionID" not in resp.json()


def test_session_cookie_works_on_every_node(sim: Simulator) -> None:
    first = Api(sim, node=0)
    first.s.auth = None
    user, password = sim.admin
    sid = first.post("/login", {"username": user, "password": password}).json()["sessionID"]
    other = Api(sim, node=2)
    other.s.auth = None
    assert other.get("/Cluster", cookies={"sessionID": sid}).status_code == 200


def test_expired_session_gets_401_and_a_new_login_works(sim: Simulator) -> None:
    api = Api(sim)
    api.s.auth = None
    user, password = sim.admin
    api.post("/login", {"username": user, "password": password})
    sim.faults.expire_sessions()
    assert api.get("/VirDomain").status_code == 401
    api.post("/login", {"username": user, "password": password})
    assert api.get("/VirDomain").status_code == 200


def test_basic_auth_is_unaffected_by_session_expiry(sim: Simulator, api: Api) -> None:
    sim.faults.expire_sessions()
    assert api.get("/VirDomain").status_code == 200


def test_backup_user_may_snapshot_but_not_manage_users(sim: Simulator) -> None:
    vm = sim.create_vm("web01", [MIB])
    backup = Api(sim, auth=sim.backup_user)
    backup.mutate("POST", "/VirDomainSnapshot", {"domainUUID": vm, "replication": False})
    resp = backup.post("/User", {"username": "evil", "password": "x", "roleUUIDs": []})
    assert resp.status_code == 403
    assert "User Management" in resp.json()["error"]


def test_read_only_user_gets_403_on_every_mutation(sim: Simulator) -> None:
    vm = sim.create_vm("web01", [MIB])
    disk = sim.disk_uuids(vm)[0]
    reader = Api(sim, auth=sim.readonly_user)
    assert reader.get("/VirDomain").status_code == 200
    assert reader.post("/VirDomainSnapshot", {"domainUUID": vm}).status_code == 403
    assert reader.delete(f"/VirDomain/{vm}").status_code == 403
    assert (
        reader.post("/VirDomain/action", [{"virDomainUUID": vm, "actionType": "STOP"}]).status_code
        == 403
    )
    assert reader.delete(f"/VirDomainBlockDevice/{disk}").status_code == 403
    resp = reader.call("PUT", "/VirtualDisk/upload?filename=a.img&filesize=4", data=b"abcd")
    assert resp.status_code == 403
    assert sim.snapshots() == []


def test_admin_can_create_a_user_who_can_then_log_in(sim: Simulator, api: Api) -> None:
    roles = {r["name"]: r["uuid"] for r in api.get("/Role").json()}
    resp = api.post("/User", {"username": "ops", "password": "pw-1", "roleUUIDs": [roles["Read"]]})
    assert resp.status_code == 200
    assert Api(sim, auth=("ops", "pw-1")).get("/Cluster").status_code == 200


def test_request_log_never_records_passwords(sim: Simulator) -> None:
    api = Api(sim)
    api.s.auth = None
    user, password = sim.admin
    api.post("/login", {"username": user, "password": password})
    assert password not in repr(sim.requests)
    assert any(path == "/rest/v1/login" for _, _, path, _ in sim.requests)


def test_plain_http_to_a_node_does_not_get_an_answer(sim: Simulator) -> None:
    url = sim.node_urls[0].replace("https://", "http://") + "/rest/v1/ping"
    try:
        resp = requests.get(url, timeout=5)
    except requests.ConnectionError:
        return
    assert resp.status_code != 200
