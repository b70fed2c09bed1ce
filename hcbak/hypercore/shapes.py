"""Record shapes: the keys and JSON types of API records, never their values.

A *shape report* lists, per resource, every key path seen in the records and the JSON
types it had. It holds no values, names or addresses, so a user can share the one
their real cluster produced; `compare` turns it into the list of differences with the
simulator's own report (`hcbak sim check-shapes`). Paths: `key`, `key.sub` inside an
object, `key[]` for the items of an array, `key[].sub` inside items that are objects.

Pure functions, no I/O, shared by the field side (`hcbak cluster probe --report`)
and the simulator's (`hcbak.sim.own_shapes.simulator_report`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

REPORT_FORMAT = "hcbak-shapes/1"
# Resource -> the GET that lists it (TaskTag is read by tag; see simulator_report).
RESOURCES = (
    "Cluster",
    "Node",
    "User",
    "Role",
    "VirDomain",
    "VirDomainBlockDevice",
    "VirDomainNetDevice",
    "VirDomainSnapshot",
    "VirDomainSnapshotSchedule",
    "VirtualDisk",
    "VirDomainReplication",
    "RemoteClusterConnection",
    "TaskTag",
)
# Keys only the simulator serves, on purpose (docs/simulator.md "Nodes").
SIMULATOR_ONLY = {"Node": {"simPort"}}

Shape = dict[str, set[str]]


def json_type(value: Any) -> str:
    """The JSON type name of a decoded value (bool is not an integer here)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def shape_of(records: Iterable[Any]) -> Shape:
    """Every key path of these records with the JSON types it had."""
    shape: Shape = {}
    for record in records:
        if isinstance(record, dict):
            _walk(record, "", shape)
    return shape


def _walk(obj: dict[str, Any], prefix: str, shape: Shape) -> None:
    for key, value in obj.items():
        path = f"{prefix}{key}"
        shape.setdefault(path, set()).add(json_type(value))
        if isinstance(value, dict):
            _walk(value, path + ".", shape)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    shape.setdefault(path + "[]", set()).add("object")
                    _walk(item, path + "[].", shape)
                else:
                    shape.setdefault(path + "[]", set()).add(json_type(item))


def make_report(records: dict[str, list[Any]], *, version: str = "") -> dict[str, Any]:
    """A shareable report: format, HyperCore version, per resource its shape."""
    return {
        "format": REPORT_FORMAT,
        "icosVersion": version,
        "resources": {
            name: {path: sorted(types) for path, types in sorted(shape_of(items).items())}
            for name, items in records.items()
        },
    }


def load_report(text: str) -> dict[str, dict[str, set[str]]]:
    """Resource -> shape from a report's JSON; ValueError when it is not one."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != REPORT_FORMAT:
        raise ValueError(f"not a shape report (format {REPORT_FORMAT!r} expected)")
    resources = data.get("resources")
    if not isinstance(resources, dict):
        raise ValueError("a shape report needs a 'resources' object")
    out: dict[str, dict[str, set[str]]] = {}
    for name, shape in resources.items():
        if not isinstance(shape, dict) or not all(
            isinstance(t, list) and all(isinstance(x, str) for x in t) for t in shape.values()
        ):
            raise ValueError(f"resource {name!r}: expected {{path: [type, ...]}}")
        out[str(name)] = {str(p): set(t) for p, t in shape.items()}
    return out


def compare(
    field: dict[str, dict[str, set[str]]], simulator: dict[str, dict[str, set[str]]]
) -> list[str]:
    """Every difference between a cluster's report and the simulator's, one line each.

    Only resources the cluster report has are compared (a probe may skip some). A key
    the simulator lacks, or a type the cluster sent that the simulator never does, is a
    difference; so is a key the simulator serves that the cluster did not send, unless
    the cluster never showed the object or array around it (all its VMs had no NICs,
    say), which proves nothing.
    """
    out: list[str] = []
    for resource in sorted(field):
        if resource not in simulator:
            out.append(f"{resource}: served by the cluster, not by the simulator")
            continue
        seen = _without_simulator_only(resource, field[resource])
        sim = _without_simulator_only(resource, simulator[resource])
        if not seen:
            continue
        for path in sorted(set(seen) | set(sim)):
            where = f"{resource}.{path}"
            if path not in sim:
                out.append(
                    f"{where}: the cluster sends {_types(seen[path])}, the simulator lacks it"
                )
            elif path not in seen:
                if _parent_seen(path, seen):
                    out.append(
                        f"{where}: the simulator sends {_types(sim[path])}, the cluster did not"
                    )
            elif not seen[path] <= sim[path]:
                out.append(
                    f"{where}: the cluster sends {_types(seen[path])}, "
                    f"the simulator {_types(sim[path])}"
                )
    return out


def _without_simulator_only(resource: str, shape: dict[str, set[str]]) -> dict[str, set[str]]:
    only = SIMULATOR_ONLY.get(resource, set())
    return {p: t for p, t in shape.items() if p.split(".")[0].split("[")[0] not in only}


def _types(types: set[str]) -> str:
    return " or ".join(sorted(types))


def _parent_seen(path: str, seen: dict[str, set[str]]) -> bool:
    """Did the cluster show the container of `path` with something inside?"""
    cut = max(path.rfind("."), path.rfind("[]"))
    if cut < 0:
        return True  # a top-level key: every record had the chance to carry it
    parent = path[:cut] if path[cut] == "." else path[: cut + 2]
    parent = parent.removesuffix(".")
    return any(p.startswith(parent + ".") or p.startswith(parent + "[]") for p in seen)
