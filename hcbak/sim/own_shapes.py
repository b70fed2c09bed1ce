"""The simulator's own shape report: every resource it serves, as GET answers it.

`hcbak sim check-shapes` compares a report from a real cluster with this one, and
`hcbak sim shapes` prints it. A throwaway simulator (one node, instant tasks) gets one
record of every kind the API has: a VM with a CD-ROM and NVRAM, a replica with a
replicated snapshot, two snapshots taken over the API (and a task), a VM created with
cloud-init data, an uploaded virtual disk and a replication.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hcbak.hypercore.shapes import RESOURCES, make_report
from hcbak.sim import api
from hcbak.sim.records import ICOS_VERSION
from hcbak.sim.simulator import Simulator


def simulator_report(state_dir: Path) -> dict[str, Any]:
    """Run a simulator in `state_dir` (created), populate it, report its shapes."""
    with Simulator(state_dir, nodes=1, task_delay=0) as sim:
        model = sim.model
        ops = model.ops
        vm = sim.create_vm("shape-vm", [1 << 20], cdrom=True, uefi=True)
        replica = sim.create_replica("shape-replica", [1 << 20])
        sim.replicate_snapshot(replica, label="replicated")
        snap_body = {"domainUUID": vm, "label": "shape", "type": "USER", "replication": False}
        with model.lock:
            ops.request_snapshot({**snap_body, "label": "shape-0"}, "")
            # a second one: its `domain.snapUUIDs` lists the first
            task, _ = ops.request_snapshot(snap_body, "")
            dom = {
                "name": "shape-cloud",
                "mem": 1 << 30,
                "numVCPU": 1,
                "cloudInitData": {"userData": "", "metaData": ""},
                "netDevs": [{"type": "VIRTIO", "vlan": 0, "connected": True}],
            }
            ops.request_vm_create({"dom": dom, "options": {"machineTypeKeyword": "bios"}}, "")
            conn = model.remote_connection()
            rep = {"sourceDomainUUID": vm, "connectionUUID": conn, "enable": True}
            ops.request_replication_create(rep, "")
        vd_uuid, path = ops.begin_upload("shape.img")
        path.write_bytes(bytes(4096))
        ops.finish_upload(vd_uuid, "")
        sim.wait_idle()
        records: dict[str, list[Any]] = {}
        for name in RESOURCES:
            where = f"/TaskTag/{task}" if name == "TaskTag" else f"/{name}"
            answer = api.dispatch(model, api.Request("GET", where, {}, None, user="admin"))
            records[name] = answer.body if isinstance(answer.body, list) else []
    return make_report(records, version=ICOS_VERSION)
