"""REST routes of the simulated /rest/v1 API: parse, authorise, call the model.

Each route names the HyperCore role it needs (None = any signed-in user); "Admin"
passes everywhere. Shapes follow ../shared/hypercore-api.md: GETs return arrays
(by-uuid: one element, 404 when missing), mutations return {taskTag, createdUUID}.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hcbak.sim.model import ClusterModel
from hcbak.sim.records import Json, RestError, user_record

# Quirk: these list endpoints reject any query filter with 400 (filter client-side).
NO_FILTER = ("VirDomainSnapshot", "VirDomainBlockDevice", "VirDomainNetDevice")
NO_FILTER_ALL = (*NO_FILTER, "VirDomainSnapshotSchedule")
# The simulated v2 API (9.7.1+) serves only what hcbak uses of it.
V2_ROUTES = (("POST", "/VirDomainSnapshot"),)


@dataclass
class Request:
    """One parsed REST call (the server fills it; `body` is decoded JSON or None)."""

    method: str
    path: str  # below /rest/v1, e.g. "/VirDomain/abc"
    query: dict[str, str]
    body: Any
    user: str = ""
    session: str = ""
    api: int = 1  # 2: the request came below /rest/v2


@dataclass
class Response:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[ClusterModel, Request, re.Match[str]], Response]
ROUTES: list[tuple[str, re.Pattern[str], str | None, Handler]] = []
UUID = r"(?P<id>[^/]+)"


def route(method: str, pattern: str, role: str | None = None) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        ROUTES.append((method, re.compile(f"^{pattern}/?$"), role, fn))
        return fn

    return register


def dispatch(model: ClusterModel, req: Request) -> Response:
    """Find the route, check the caller's role, run it; RestError -> JSON error."""
    if req.api == 2 and (req.method, req.path.rstrip("/")) not in V2_ROUTES:
        return error(404, f"No such resource /rest/v2{req.path} in the simulated v2 API")
    matched_path = False
    for method, pattern, role, fn in ROUTES:
        m = pattern.match(req.path)
        if not m:
            continue
        matched_path = True
        if method != req.method:
            continue
        roles = model.roles_of(req.user)
        if role and "Admin" not in roles and role not in roles:
            return error(403, f"User {req.user} lacks the {role} role")
        try:
            with model.lock:
                return fn(model, req, m)
        except RestError as exc:
            return error(exc.status, exc.message)
    if matched_path:
        return error(405, f"{req.method} not allowed on {req.path}")
    return error(404, f"No such resource {req.path}")


def error(status: int, message: str) -> Response:
    return Response(status, {"error": message})


def task(tag: str | int, created: str = "") -> Response:
    return Response(200, {"taskTag": tag, "createdUUID": created})


def _one(model: ClusterModel, items: list[Json], what: str, key: str) -> Response:
    """GET by uuid: a one-element array; `[]` when missing (or 404 under the fault)."""
    found = [i for i in items if i.get("uuid") == key]
    if not found:
        return _missing(model, what, key)
    return Response(200, found[:1])


def _missing(model: ClusterModel, what: str, key: str) -> Response:
    if model.faults.missing_as_404:
        return error(404, f"{what} {key} not found")
    return Response(200, [])


def _no_filters(req: Request, resource: str) -> None:
    if req.query and resource in NO_FILTER_ALL:
        raise RestError(400, f"Query filters are not supported on {resource}")


def _body(req: Request) -> Json:
    if not isinstance(req.body, dict):
        raise RestError(400, "Expected a JSON object body")
    return req.body


# --- cluster, nodes, users -------------------------------------------------------------
@route("GET", "/Cluster")
def get_cluster(model: ClusterModel, req: Request, m: re.Match[str]) -> Response:
    return Response(200, [model.cluster_record()])


@route("GET", "/Node")
def get_nodes(model: ClusterModel, req: Request, m: re.Match[str]) -> Response:
    return Response(200, model.node_records())


@route("GET", f"/Node/{UUID}")
def get_node(model: ClusterModel, req: Request, m: re.Match[str]) -> Response:
    return _one(model, model.node_records(), "Node", m["id"])


def _user_records(model: ClusterModel) -> list[Json]:
    roles = model.s["roles"]
    return [
        {
            "uuid": u["uuid"],
            "username": u["username"],
            "fullName": u["username"],
            "roleUUIDs": [roles[r] for r in u["roles"]],
            "sessionLimit": 0,
        }
        for u in model.s["users"].values()
    ]


def _role_records(model: ClusterModel) -> list[Json]:
    return [{"uuid": u, "name": n} for n, u in model.s["roles"].items()]


@route("GET", "/Role")
def get_roles(model: ClusterModel, req: Request, m: re.Match[str]) -> Response:
    return Response(200, _role_records(model))


@route("GET", f"/Role/{UUID}")
def get_role(model: ClusterModel, req: Request, m: re.Match[str]) -> Response:
    return _one(model, _role_records(model), "Role", m["id"])


@route("GET", "/User")
def get_users(model: ClusterModel, req: Request, m: re.Match[str]) -> Response:
    return Response(200, _user_records(model))


@route("GET", f"/User/{UUID}")
def get_user(model: ClusterModel, req: Request, m: re.Match[str]) -> Response:
    return _one(model, _user_records(model), "User", m["id"])


@route("POST", "/User", role="User Management")
def post_user(model: ClusterModel, req: Request, m: re.Match[str]) -> Response:
    body = _body(req)
    name, password = body.get("username"), body.get("password")
    if not isinstance(name, str) or not isinstance(password, str) or not name:
        raise RestError(400, "username and password are required")
    by_uuid = {u: n for n, u in model.s["roles"].items()}
    roles = [by_uuid[r] for r in body.get("roleUUIDs", []) if r in by_uuid]
    model.s["users"][name] = user_record(name, password, roles)
    model.touch()
    return task("", model.s["users"][name]["uuid"])


# --- VMs ------------------------------------------------------------------------------
@route("GET", "/VirDomain")
def get_vms(model: ClusterModel, req: Request, m: re.Match[str]) -> Response:
    return Response(200, [model.vm_record(u) for u in model.s["vms"]])


@route("GET", f"/VirDomain/{UUID}")
def get_vm(model: ClusterModel, req: Request, m: re.Match[str]) -> Response:
    if m["id"] not in model.s["vms"]:
        return _missing(model, "VM", m["id"])
    return Response(200, [model.vm_record(m["id"])])


@route("POST", "/VirDomain", role="VM Create/Edit")
def post_vm(model: ClusterModel, req: Request, m: re.Match[str]) -> Response:
    return task(*model.ops.request_vm_create(_body(req), req.session))


@route("POST", f"/VirDomain/{UUID}/clone", role="VM Create/Edit")
def post_vm_clone(model: ClusterModel, req: Request, m: re.Match[str]) -> Response:
    return task(*model.ops.request_vm_clone(m["id"], _body(req), req.session))


@route("POST", "/VirDomain/action", role="VM Power Controls")
def post_vm_action(model: ClusterModel, req: Request, m: re.Match[str]) -> Response:
    return task(model.ops.request_vm_actions(req.body, req.session))


@route("PATCH", f"/VirDomain/{UUID}", role="VM Create/Edit")
def patch_vm(model: ClusterModel, req: Request, m: re.Match[str]) -> Response:
    return task(model.ops.request_vm_update(m["id"], _body(req), req.session), m["id"])


@route("DELETE", f"/VirDomain/{UUID}", role="VM Delete")
def delete_vm(model: ClusterModel, req: Request, m: re.Match[str]) -> Response:
    # Quirk kept on purpose: delete calls answer with an integer taskTag.
    return task(int(model.ops.request_vm_delete(m["id"], req.session)))


# --- block devices ----------------------------------------------------------------------
def _disk_records(model: ClusterModel) -> list[Json]:
    return [model.disk_record(d) for vm in model.s["vms"] for d in model.vm_disks(vm)]


@route("GET", "/VirDomainBlockDevice")
def get_disks(model: ClusterModel, req: Request, m: re.Match[str]) -> Response:
    _no_filters(req, "VirDomainBlockDevice")
    return Response(200, _disk_records(model))


@route("GET", f"/VirDomainBlockDevice/{UUID}")
def get_disk(model: ClusterModel, req: Request, m: re.Match[str]) -> Response:
    _no_filters(req, "VirDomainBlockDevice")
    return _one(model, _disk_records(model), "Block device", m["id"])


@route("POST", "/VirDomainBlockDevice", role="VM Create/Edit")
def post_disk(model: ClusterModel, req: Request, m: re.Match[str]) -> Response:
    return task(*model.ops.request_disk_create(_body(req), req.session))


@route("POST", f"/VirDomainBlockDevice/{UUID}/clone", role="Backup")
def post_disk_clone(model: ClusterModel, req: Request, m: re.Match[str]) -> Response:
    return task(*model.ops.request_disk_clone(m["id"], _body(req), req.session))


@route("POST", f"/VirDomainBlockDevice/{UUID}/snapDiff", role="Backup")
def post_snap_diff(model: ClusterModel, req: Request, m: re.Match[str]) -> Response:
    body = _body(req)
    a, b = body.get("snapshotSerialFrom"), body.get("snapshotSerialTo")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (a, b)):
        raise RestError(400, "snapshotSerialFrom and snapshotSerialTo must be integers >= 0")
    intervals = model.snap_diff(m["id"], int(a), int(b))  # type: ignore[arg-type]
    return Response(200, [{"lower": lo, "upper": hi} for lo, hi in intervals])


@route("PATCH", f"/VirDomainBlockDevice/{UUID}", role="VM Create/Edit")
def patch_disk(model: ClusterModel, req: Request, m: re.Match[str]) -> Response:
    return task(model.ops.request_disk_update(m["id"], _body(req), req.session), m["id"])


@route("DELETE", f"/VirDomainBlockDevice/{UUID}", role="VM Create/Edit")
def delete_disk(model: ClusterModel, req: Request, m: re.Match[str]) -> Response:
    return task(int(model.ops.request_disk_delete(m["id"], req.session)))


@route("GET", "/VirDomainNetDevice")
def get_nics(model: ClusterModel, req: Request, m: re.Match[str]) -> Response:
    _no_filters(req, "VirDomainNetDevice")
    return Response(200, model.net_records())


@route("GET", f"/VirDomainNetDevice/{UUID}")
def get_nic(model: ClusterModel, req: Request, m: re.Match[str]) -> Response:
    _no_filters(req, "VirDomainNetDevice")
    return _one(model, model.net_records(), "Net device", m["id"])


@route("POST", "/VirDomainNetDevice", role="VM Create/Edit")
def post_nic(model: ClusterModel, req: Request, m: re.Match[str]) -> Response:
    return task(*model.ops.request_nic_create(_body(req), req.session))


@route("PATCH", f"/VirDomainNetDevice/{UUID}", role="VM Create/Edit")
def patch_nic(model: ClusterModel, req: Request, m: re.Match[str]) -> Response:
    return task(model.ops.request_nic_update(m["id"], _body(req), req.session), m["id"])


@route("DELETE", f"/VirDomainNetDevice/{UUID}", role="VM Create/Edit")
def delete_nic(model: ClusterModel, req: Request, m: re.Match[str]) -> Response:
    return task(int(model.ops.request_nic_delete(m["id"], req.session)))


# --- snapshots --------------------------------------------------------------------------
@route("GET", "/VirDomainSnapshot")
def get_snapshots(model: ClusterModel, req: Request, m: re.Match[str]) -> Response:
    _no_filters(req, "VirDomainSnapshot")
    return Response(200, [model.snapshot_record(s) for s in model.snapshots_sorted()])


@route("GET", f"/VirDomainSnapshot/{UUID}")
def get_snapshot(model: ClusterModel, req: Request, m: re.Match[str]) -> Response:
    _no_filters(req, "VirDomainSnapshot")
    snap = model.s["snapshots"].get(m["id"])
    if snap is None or model.faults.snapshot_by_uuid_gone:
        return _missing(model, "Snapshot", m["id"])
    return Response(200, [model.snapshot_record(snap)])


@route("POST", "/VirDomainSnapshot", role="Backup")
def post_snapshot(model: ClusterModel, req: Request, m: re.Match[str]) -> Response:
    return task(*model.ops.request_snapshot(_body(req), req.session, req.api))


@route("DELETE", f"/VirDomainSnapshot/{UUID}", role="Backup")
def delete_snapshot(model: ClusterModel, req: Request, m: re.Match[str]) -> Response:
    return task(int(model.ops.request_snapshot_delete(m["id"], req.session)))


@route("GET", "/VirDomainSnapshotSchedule")
def get_schedules(model: ClusterModel, req: Request, m: re.Match[str]) -> Response:
    _no_filters(req, "VirDomainSnapshotSchedule")
    return Response(200, [])


# --- replication ------------------------------------------------------------------------
@route("GET", "/VirDomainReplication")
def get_replications(model: ClusterModel, req: Request, m: re.Match[str]) -> Response:
    return Response(200, model.replication_records())


@route("GET", f"/VirDomainReplication/{UUID}")
def get_replication(model: ClusterModel, req: Request, m: re.Match[str]) -> Response:
    return _one(model, model.replication_records(), "Replication", m["id"])


@route("POST", "/VirDomainReplication", role="VM Create/Edit")
def post_replication(model: ClusterModel, req: Request, m: re.Match[str]) -> Response:
    return task(*model.ops.request_replication_create(_body(req), req.session))


@route("PATCH", f"/VirDomainReplication/{UUID}", role="VM Create/Edit")
def patch_replication(model: ClusterModel, req: Request, m: re.Match[str]) -> Response:
    return task(model.ops.request_replication_update(m["id"], _body(req), req.session), m["id"])


@route("GET", "/RemoteClusterConnection")
def get_connections(model: ClusterModel, req: Request, m: re.Match[str]) -> Response:
    return Response(200, model.connection_records())


@route("GET", f"/RemoteClusterConnection/{UUID}")
def get_connection(model: ClusterModel, req: Request, m: re.Match[str]) -> Response:
    return _one(model, model.connection_records(), "Remote cluster connection", m["id"])


# --- tasks ------------------------------------------------------------------------------
@route("GET", f"/TaskTag/{UUID}")
def get_task(model: ClusterModel, req: Request, m: re.Match[str]) -> Response:
    record = model.task_record(m["id"])
    # A tag the cluster does not know: an empty array (clients treat it as finished).
    return Response(200, [] if record is None else [record])


# --- virtual disks ------------------------------------------------------------------------
@route("GET", "/VirtualDisk")
def get_vds(model: ClusterModel, req: Request, m: re.Match[str]) -> Response:
    return Response(200, [model.vd_record(v) for v in model.s["vdisks"].values()])


@route("GET", f"/VirtualDisk/{UUID}")
def get_vd(model: ClusterModel, req: Request, m: re.Match[str]) -> Response:
    vds = [model.vd_record(v) for v in model.s["vdisks"].values()]
    return _one(model, vds, "Virtual disk", m["id"])


@route("POST", f"/VirtualDisk/{UUID}/attach", role="VM Create/Edit")
def post_vd_attach(model: ClusterModel, req: Request, m: re.Match[str]) -> Response:
    return task(*model.ops.request_vd_attach(m["id"], _body(req), req.session))


@route("DELETE", f"/VirtualDisk/{UUID}", role="VM Create/Edit")
def delete_vd(model: ClusterModel, req: Request, m: re.Match[str]) -> Response:
    return task(int(model.ops.request_vd_delete(m["id"], req.session)))


# PUT /VirtualDisk/upload streams its body and is handled by the server itself
# (server.py `_upload`), with this role:
UPLOAD_ROLE = "VM Create/Edit"


def json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()
