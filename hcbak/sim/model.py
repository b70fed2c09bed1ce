"""The simulated cluster's state and everything that changes it (no HTTP here).

`ClusterModel` owns the JSON metadata (<state>/state.json), the disk files
(`DiskStore`) and the task queue. REST handlers (api.py) validate requests and call
the `request_*` methods, which check the request *now* (4xx) and queue a task whose
effect runs when the task completes (QUEUED -> RUNNING -> COMPLETE over the task
delay), like HyperCore: a snapshot exists only once its task is COMPLETE.
Test-control calls (`create_vm`, `write`, ...) change state directly.

One re-entrant lock guards everything; handlers are short, so contention is moot.
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import threading
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any

from hcbak.sim.disks import DiskStore, Interval, merge_intervals, read_range, sparse_copy
from hcbak.sim.faults import Faults
from hcbak.sim.qcow2 import Qcow2Error, qcow2_to_raw

Json = dict[str, Any]

TERMINAL = ("COMPLETE", "ERROR", "UNINITIALIZED")
DISK_TYPES = ("VIRTIO_DISK", "SCSI_DISK", "IDE_DISK", "IDE_CDROM", "IDE_FLOPPY", "NVRAM", "VTPM")
NVRAM_SIZE = 540672  # what real clusters report for an NVRAM device
ICOS_VERSION = "9.4.30.217736"
ALL_ROLES = (
    "Admin",
    "Read",
    "Backup",
    "VM Create/Edit",
    "VM Delete",
    "VM Power Controls",
    "Cluster Settings",
    "User Management",
)
BACKUP_ROLES = ("Read", "Backup", "VM Create/Edit", "VM Delete", "VM Power Controls")
POWER_STATES = {
    "START": "RUNNING",
    "SHUTDOWN": "SHUTOFF",
    "STOP": "SHUTOFF",
    "REBOOT": "RUNNING",
    "RESET": "RUNNING",
    "PAUSE": "PAUSED",
    "LIVEMIGRATE": None,
}


class RestError(Exception):
    """An HTTP error answer (status + message), raised while checking a request."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class TaskError(Exception):
    """A task ends in ERROR with a `%@` message template and its parameters."""

    def __init__(self, template: str, *params: str) -> None:
        super().__init__(template)
        self.template = template
        self.params = [str(p) for p in params]


def new_uuid() -> str:
    return str(uuidlib.uuid4())


class ClusterModel:
    """State of one simulated cluster; see module docstring."""

    def __init__(self, state_dir: Path, faults: Faults, task_delay: float, nodes: int) -> None:
        self.state_dir = state_dir
        self.faults = faults
        self.default_task_delay = task_delay
        self.lock = threading.RLock()
        self.store = DiskStore(state_dir / "disks", state_dir / "dev")
        self.vd_dir = state_dir / "vdisks"
        self.vd_dir.mkdir(parents=True, exist_ok=True)
        self._path = state_dir / "state.json"
        self.s: Json = self._load() or self._fresh()
        while len(self.s["nodes"]) < nodes:
            self.s["nodes"].append({"uuid": new_uuid()})
        self.ports: list[int] = [0] * nodes
        self.sessions: dict[str, str] = {}
        self._dirty = True
        if not self.s.get("worker"):
            self.s["worker"] = self.create_vm("hcbak-worker", [1 << 30], state="RUNNING")

    # --- persistence ----------------------------------------------------------------
    def _fresh(self) -> Json:
        return {
            "format": 1,
            "cluster": {"uuid": new_uuid(), "clusterName": "sim-cluster"},
            "nodes": [],
            "admin_token": secrets.token_urlsafe(24),
            "users": {
                "admin": _user("admin", secrets.token_urlsafe(12), ["Admin"]),
                "hcbak-backup": _user("hcbak-backup", secrets.token_urlsafe(12), BACKUP_ROLES),
                "auditor": _user("auditor", secrets.token_urlsafe(12), ["Read"]),
            },
            "roles": {name: new_uuid() for name in ALL_ROLES},
            "vms": {},
            "disks": {},
            "snapshots": {},
            "vdisks": {},
            "tasks": {},
            "next_task": 1,
            "writelog": {},
            "worker": "",
        }

    def _load(self) -> Json | None:
        try:
            data: Json = json.loads(self._path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        return data

    def save(self) -> None:
        """Atomic write of the metadata (temp file + rename) when something changed."""
        with self.lock:
            if not self._dirty:
                return
            text = json.dumps(self.s, separators=(",", ":"))
            self._dirty = False
        tmp = self._path.with_name("state.json.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, self._path)

    def touch(self) -> None:
        self._dirty = True

    # --- users and sessions -------------------------------------------------------------
    def check_password(self, username: str, password: str) -> bool:
        user = self.s["users"].get(username)
        return bool(user) and secrets.compare_digest(user["password"], password)

    def roles_of(self, username: str) -> list[str]:
        user = self.s["users"].get(username)
        return list(user["roles"]) if user else []

    def login(self, username: str) -> str:
        sid = secrets.token_hex(16)
        with self.lock:
            self.sessions[sid] = username
        return sid

    def session_user(self, sid: str) -> str | None:
        with self.lock:
            if self.faults.sessions_expired:
                # expire_sessions(): the cluster forgot every session at once.
                self.sessions.clear()
                self.faults.sessions_expired = False
            return self.sessions.get(sid)

    def logout(self, sid: str | None) -> None:
        with self.lock:
            if sid:
                self.sessions.pop(sid, None)

    # --- tasks ----------------------------------------------------------------------
    @property
    def task_delay(self) -> float:
        override = self.faults.task_delay_override
        return self.default_task_delay if override is None else override

    def start_task(
        self,
        kind: str,
        op: str,
        args: Json,
        *,
        vms: list[str],
        description: str,
        params: list[str],
        object_uuid: str = "",
        session: str = "",
    ) -> str:
        with self.lock:
            tag = str(self.s["next_task"])
            self.s["next_task"] += 1
            now = time.time()
            self.s["tasks"][tag] = {
                "taskTag": tag,
                "progressPercent": 0,
                "state": "QUEUED",
                "formattedDescription": description,
                "descriptionParameters": params,
                "formattedMessage": "",
                "messageParameters": [],
                "objectUUID": object_uuid,
                "created": int(now),
                "modified": int(now),
                "completed": 0,
                "sessionID": session,
                "nodeUUIDs": [self.s["nodes"][0]["uuid"]],
                "_kind": kind,
                "_op": op,
                "_args": args,
                "_vms": vms,
                "_start": now,
                "_due": now + self.task_delay,
            }
            self.touch()
            if self.task_delay <= 0:
                self._finish(self.s["tasks"][tag])
            return tag

    def advance(self) -> None:
        """Move tasks along their timeline; run the effect of those that are due."""
        now = time.time()
        with self.lock:
            for task in list(self.s["tasks"].values()):
                if task["state"] in TERMINAL:
                    continue
                if now >= task["_due"]:
                    self._finish(task)
                elif task["state"] == "QUEUED" and now >= (task["_start"] + task["_due"]) / 2:
                    task.update(state="RUNNING", progressPercent=50, modified=int(now))
                    self.touch()

    def _finish(self, task: Json) -> None:
        try:
            if self.faults.task_fails(task["_kind"]):
                raise TaskError("Task %@ failed: injected fault", task["_kind"])
            getattr(self, "_op_" + task["_op"])(**task["_args"])
            task.update(state="COMPLETE", progressPercent=100)
        except TaskError as exc:
            task.update(state="ERROR", formattedMessage=exc.template, messageParameters=exc.params)
        except Exception as exc:  # a simulator bug must still end the task, visibly
            task.update(
                state="ERROR",
                formattedMessage="Internal error: %@",
                messageParameters=[f"{type(exc).__name__}: {exc}"],
            )
        now = int(time.time())
        task.update(modified=now, completed=now)
        self.touch()

    def task_record(self, tag: str) -> Json | None:
        self.advance()
        with self.lock:
            task = self.s["tasks"].get(str(tag))
            return None if task is None else {k: v for k, v in task.items() if k[0] != "_"}

    def check_vm_idle(self, vm_uuid: str) -> None:
        """HyperCore answers 500 to a mutation on a VM that still has a task running."""
        self.advance()
        for task in self.s["tasks"].values():
            if task["state"] not in TERMINAL and vm_uuid in task["_vms"]:
                raise RestError(
                    500, f"Another task ({task['taskTag']}) is in progress for VM {vm_uuid}"
                )

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Block until no task is pending (tests and shutdown)."""
        end = time.time() + timeout
        while time.time() < end:
            self.advance()
            with self.lock:
                if all(t["state"] in TERMINAL for t in self.s["tasks"].values()):
                    return
            time.sleep(0.002)

    # --- records (exact REST shapes) -------------------------------------------------
    def vm(self, key: str) -> Json:
        """Internal VM by uuid or name."""
        vms = self.s["vms"]
        if key in vms:
            return vms[key]
        for vm in vms.values():
            if vm["name"] == key:
                return vm
        raise KeyError(key)

    def vm_disks(self, vm_uuid: str) -> list[Json]:
        disks = [d for d in self.s["disks"].values() if d["vm"] == vm_uuid and not d["deleted"]]
        return sorted(disks, key=lambda d: (d["slot"] < 0, d["slot"], d["created"]))

    def vm_record(self, vm_uuid: str) -> Json:
        vm = self.s["vms"][vm_uuid]
        rec = {k: copy.deepcopy(v) for k, v in vm.items() if k[0] != "_"}
        rec["tags"] = ",".join(vm["tags"])
        rec["blockDevs"] = [self.disk_record(d) for d in self.vm_disks(vm_uuid)]
        rec["nodeUUID"] = self.s["nodes"][0]["uuid"]
        return rec

    def disk_record(self, d: Json) -> Json:
        return {
            "uuid": d["uuid"],
            "virDomainUUID": d["vm"],
            "type": d["type"],
            "cacheMode": d["cacheMode"],
            "capacity": d["capacity"],
            "allocation": _allocated(self.store.live_path(d["uuid"])),
            "shareUUID": "",
            "path": f"scribe/{d['uuid']}",
            "slot": d["slot"],
            "name": d["name"],
            "disableSnapshotting": d["disableSnapshotting"],
            "tieringPriorityFactor": 8,
            "mountPoints": [],
            "createdTimestamp": int(d["created"]),
            "readOnly": d["readOnly"],
        }

    def net_records(self) -> list[Json]:
        return [copy.deepcopy(n) for vm in self.s["vms"].values() for n in vm["netDevs"]]

    def snapshot_record(self, snap: Json) -> Json:
        return {k: copy.deepcopy(v) for k, v in snap.items() if k[0] != "_"}

    def snapshots_sorted(self) -> list[Json]:
        return sorted(self.s["snapshots"].values(), key=lambda s: (s["_created"], s["uuid"]))

    def node_records(self) -> list[Json]:
        return [
            {
                "uuid": n["uuid"],
                "lanIP": "127.0.0.1",
                "backplaneIP": f"169.254.0.{i + 1}",
                "peerID": i + 1,
                "networkStatus": "ONLINE",
                "virtualizationOnline": True,
                # Simulator extension: all nodes share 127.0.0.1, so lanIP alone cannot
                # name a node; simPort is the HTTPS port of that node.
                "simPort": self.ports[i] if i < len(self.ports) else 0,
            }
            for i, n in enumerate(self.s["nodes"][: len(self.ports)])
        ]

    def cluster_record(self) -> Json:
        return {**self.s["cluster"], "icosVersion": ICOS_VERSION}

    def vd_record(self, vd: Json) -> Json:
        return {
            "uuid": vd["uuid"],
            "name": vd["name"],
            "capacity": vd["capacity"],
            "blockSize": 1048576,
            "totalAllocationBytes": vd["capacity"],
            "replicationFactor": 2,
        }

    # --- control API: setup ----------------------------------------------------------
    def create_vm(
        self,
        name: str,
        disks: list[int],
        *,
        tags: tuple[str, ...] | list[str] = (),
        mem: int = 2 << 30,
        vcpus: int = 2,
        machine_type: str = "scale-7.2",
        disk_type: str = "VIRTIO_DISK",
        uefi: bool = False,
        cdrom: bool = False,
        nics: int = 1,
        state: str = "RUNNING",
        description: str = "",
        source_vm_uuid: str = "",
    ) -> str:
        with self.lock:
            vm_uuid = new_uuid()
            self._add_vm(
                vm_uuid,
                {
                    "name": name,
                    "description": description,
                    "tags": list(tags),
                    "mem": mem,
                    "numVCPU": vcpus,
                    "machineType": "scale-uefi-9.3" if uefi else machine_type,
                    "state": state,
                    "sourceVirDomainUUID": source_vm_uuid,
                },
            )
            vm = self.s["vms"][vm_uuid]
            for slot, cap in enumerate(disks):
                self._add_disk(new_uuid(), vm_uuid, disk_type, cap, slot=slot)
            if cdrom:
                self._add_disk(new_uuid(), vm_uuid, "IDE_CDROM", 0, slot=len(disks))
            if uefi:
                nvram = self._add_disk(new_uuid(), vm_uuid, "NVRAM", NVRAM_SIZE, slot=-1)
                self.store.write(nvram, 0, b"NVRAM:" + name.encode() + bytes(26))
            data = [d["uuid"] for d in self.vm_disks(vm_uuid) if d["type"] == disk_type]
            vm["bootDevices"] = data[:1]
            for i in range(nics):
                vm["netDevs"].append(_nic(vm_uuid, i))
            self.touch()
            return vm_uuid

    def _add_vm(self, vm_uuid: str, fields: Json) -> None:
        self.s["vms"][vm_uuid] = {
            "uuid": vm_uuid,
            "name": fields["name"],
            "description": fields.get("description", ""),
            "operatingSystem": "os_other",
            "state": fields.get("state", "SHUTOFF"),
            "desiredDisposition": fields.get("state", "SHUTOFF"),
            "mem": int(fields.get("mem", 1 << 30)),
            "numVCPU": int(fields.get("numVCPU", 1)),
            "machineType": fields.get("machineType", "scale-7.2"),
            "tags": list(fields.get("tags", [])),
            "bootDevices": [],
            "netDevs": [],
            "snapUUIDs": [],
            "sourceVirDomainUUID": fields.get("sourceVirDomainUUID", ""),
            "snapshotSerialNumber": 0,
            "snapshotScheduleUUID": "",
            "replicationUUIDs": [],
            "created": int(time.time()),
        }

    def _add_disk(
        self,
        disk_uuid: str,
        vm_uuid: str,
        dtype: str,
        capacity: int,
        *,
        slot: int | None = None,
        cache_mode: str = "WRITETHROUGH",
        source: Any = None,
        regenerate: bool | None = None,
        read_only: bool = False,
        disable_snapshotting: bool = False,
    ) -> str:
        if slot is None:
            used = {d["slot"] for d in self.vm_disks(vm_uuid)}
            slot = next(i for i in range(len(used) + 1) if i not in used)
        if source is None:
            self.store.create(disk_uuid, capacity)
        else:
            self.store.create_from(disk_uuid, source, capacity)
        self.s["disks"][disk_uuid] = {
            "uuid": disk_uuid,
            "vm": vm_uuid,
            "type": dtype,
            "capacity": capacity,
            "slot": slot,
            "cacheMode": cache_mode,
            "name": "",
            "disableSnapshotting": disable_snapshotting,
            "readOnly": read_only,
            "regenerateDiskID": regenerate,
            "sourceSnapshotUUID": "",
            "sourceVirtualDiskUUID": "",
            "created": time.time(),
            "deleted": False,
            "serial": 0,
        }
        if vm_uuid and vm_uuid == self.s.get("worker"):
            self.store.attach_device(disk_uuid)
        self.touch()
        return disk_uuid

    def set_disable_snapshotting(self, disk_uuid: str, value: bool = True) -> None:
        with self.lock:
            self.s["disks"][disk_uuid]["disableSnapshotting"] = value
            self.touch()

    # --- guest I/O and the write log ----------------------------------------------------
    def write(self, disk_uuid: str, offset: int, data: bytes) -> None:
        with self.lock:
            d = self._live_disk(disk_uuid)
            if offset < 0 or offset + len(data) > d["capacity"]:
                raise ValueError(f"write [{offset}, {offset + len(data)}) beyond capacity")
            if not data:
                return
            self.store.write(disk_uuid, offset, data)
            self.log_write(disk_uuid, d["serial"], [(offset, offset + len(data))])

    def log_write(self, disk_uuid: str, epoch: int, intervals: list[Interval]) -> None:
        log = self.s["writelog"].setdefault(disk_uuid, {})
        entries = log.setdefault(str(epoch), [])
        entries.extend([list(i) for i in intervals])
        if len(entries) > 64:
            log[str(epoch)] = [list(i) for i in merge_intervals(map(tuple, entries))]
        self.touch()

    def snap_diff(self, disk_uuid: str, serial_from: int, serial_to: int) -> list[Interval]:
        with self.lock:
            d = self.s["disks"].get(disk_uuid)
            if d is None:
                raise RestError(404, f"Block device {disk_uuid} not found")
            serials = self.serials_of(disk_uuid)
            for n in (serial_from, serial_to):
                if n != 0 and n not in serials:
                    raise RestError(400, f"No device snapshot with serial {n} for {disk_uuid}")
            if serial_to and serial_from >= serial_to:
                raise RestError(400, "snapshotSerialFrom must be older than snapshotSerialTo")
            picked: list[Interval] = []
            for epoch, entries in self.s["writelog"].get(disk_uuid, {}).items():
                e = int(epoch)
                if e >= serial_from and (serial_to == 0 or e < serial_to):
                    picked.extend((lo, hi) for lo, hi in entries)
            cap = d["capacity"]
            return [(lo, min(hi, cap)) for lo, hi in merge_intervals(picked) if lo < cap]

    def serials_of(self, disk_uuid: str) -> dict[int, str]:
        """Device serial -> snapshot uuid, for the snapshots that still exist."""
        out: dict[int, str] = {}
        for snap in self.s["snapshots"].values():
            for ds in snap["deviceSnapshots"]:
                if ds["uuid"] == disk_uuid:
                    out[int(ds["serialNumber"])] = snap["uuid"]
        return out

    def snapshot_file(self, snap_uuid: str, disk_uuid: str) -> Path:
        snap = self.s["snapshots"].get(snap_uuid)
        if snap is None:
            raise KeyError(snap_uuid)
        for ds in snap["deviceSnapshots"]:
            if ds["uuid"] == disk_uuid:
                return self.store.snap_path(disk_uuid, int(ds["serialNumber"]))
        raise KeyError(f"disk {disk_uuid} is not in snapshot {snap_uuid}")

    def read_snapshot(self, snap_uuid: str, disk_uuid: str, offset: int, length: int) -> bytes:
        with self.lock:
            return read_range(self.snapshot_file(snap_uuid, disk_uuid), offset, length)

    def _live_disk(self, disk_uuid: str) -> Json:
        d = self.s["disks"].get(disk_uuid)
        if d is None or d["deleted"]:
            raise KeyError(f"no live block device {disk_uuid}")
        return d

    # --- snapshots ----------------------------------------------------------------------
    def take_snapshot(
        self, snap_uuid: str, vm_uuid: str, label: str, stype: str, replication: bool
    ) -> None:
        """Freeze every snapshottable disk of the VM (hard links: O(metadata))."""
        vm = self.s["vms"][vm_uuid]
        previous = vm["snapshotSerialNumber"] if vm["snapUUIDs"] else 0
        vm["snapshotSerialNumber"] += 1
        device_snapshots = []
        for d in self.vm_disks(vm_uuid):
            if d["disableSnapshotting"] or d["type"] in ("IDE_CDROM", "IDE_FLOPPY"):
                continue
            d["serial"] += 1
            self.store.freeze(d["uuid"], d["serial"])
            device_snapshots.append({"uuid": d["uuid"], "serialNumber": d["serial"]})
        domain = self.vm_record(vm_uuid)
        now = time.time()
        self.s["snapshots"][snap_uuid] = {
            "uuid": snap_uuid,
            "domainUUID": vm_uuid,
            "domain": domain,
            "label": label,
            "type": stype,
            "timestamp": int(now),
            "automatedTriggerTimestamp": 0,
            "localRetainUntilTimestamp": 0,
            "remoteRetainUntilTimestamp": 0,
            "blockCountDiff": 0,
            "blockCountDiffFromSerialNumber": previous,
            "replication": replication,
            "deviceSnapshots": device_snapshots,
            "_created": now,
        }
        vm["snapUUIDs"].append(snap_uuid)
        self.touch()

    def drop_snapshot(self, snap_uuid: str) -> None:
        snap = self.s["snapshots"].pop(snap_uuid)
        for ds in snap["deviceSnapshots"]:
            self.store.drop_layer(ds["uuid"], int(ds["serialNumber"]))
        vm = self.s["vms"].get(snap["domainUUID"])
        if vm and snap_uuid in vm["snapUUIDs"]:
            vm["snapUUIDs"].remove(snap_uuid)
        self.touch()

    # --- REST mutations: check now, act when the task completes --------------------------
    def request_snapshot(self, body: Json, session: str) -> tuple[str, str]:
        if "virDomainUUID" in body and "domainUUID" not in body:
            raise RestError(400, "Unknown field virDomainUUID; use domainUUID")
        vm_uuid = body.get("domainUUID")
        if not isinstance(vm_uuid, str) or vm_uuid not in self.s["vms"]:
            raise RestError(400, f"domainUUID {vm_uuid!r} does not name a VM")
        vm = self.s["vms"][vm_uuid]
        if vm["sourceVirDomainUUID"]:
            raise RestError(
                400, "Cannot create a snapshot of a replication target VM (sourceVirDomainUUID)"
            )
        self.check_vm_idle(vm_uuid)
        snap_uuid = new_uuid()
        args: Json = {
            "snap_uuid": snap_uuid,
            "vm_uuid": vm_uuid,
            "label": str(body.get("label", "")),
            "stype": str(body.get("type", "USER")),
            # Quirk: replication defaults to TRUE when the field is absent.
            "replication": bool(body.get("replication", True)),
        }
        tag = self.start_task(
            "snapshot",
            "snapshot_create",
            args,
            vms=[vm_uuid],
            description="Create snapshot %@ of VM %@",
            params=[args["label"], vm["name"]],
            object_uuid=snap_uuid,
            session=session,
        )
        return tag, snap_uuid

    def _op_snapshot_create(
        self, snap_uuid: str, vm_uuid: str, label: str, stype: str, replication: bool
    ) -> None:
        vm = self.s["vms"].get(vm_uuid)
        if vm is None:
            raise TaskError("VM %@ no longer exists", vm_uuid)
        if vm_uuid in self.faults.failing_snapshot_vms:
            raise TaskError("Snapshot of VM %@ failed: %@", vm["name"], "storage error")
        if self.faults.no_space:
            raise TaskError("Snapshot of VM %@ failed: %@", vm["name"], "insufficient space")
        self.take_snapshot(snap_uuid, vm_uuid, label, stype, replication)

    def request_snapshot_delete(self, snap_uuid: str, session: str) -> str:
        snap = self.s["snapshots"].get(snap_uuid)
        if snap is None:
            raise RestError(404, f"Snapshot {snap_uuid} not found")
        self.check_vm_idle(snap["domainUUID"])
        return self.start_task(
            "delete",
            "snapshot_delete",
            {"snap_uuid": snap_uuid},
            vms=[snap["domainUUID"]],
            description="Delete snapshot %@",
            params=[snap["label"]],
            object_uuid=snap_uuid,
            session=session,
        )

    def _op_snapshot_delete(self, snap_uuid: str) -> None:
        if snap_uuid in self.s["snapshots"]:
            self.drop_snapshot(snap_uuid)

    def request_vm_create(self, body: Json, session: str) -> tuple[str, str]:
        dom = body.get("dom")
        if not isinstance(dom, dict) or not dom.get("name"):
            raise RestError(400, "Body needs dom.name")
        for bd in dom.get("blockDevs", []):
            _check_disk_type(bd.get("type", "VIRTIO_DISK"))
        vm_uuid = new_uuid()
        return (
            self.start_task(
                "create",
                "vm_create",
                {"vm_uuid": vm_uuid, "dom": dom},
                vms=[vm_uuid],
                description="Create VM %@",
                params=[str(dom["name"])],
                object_uuid=vm_uuid,
                session=session,
            ),
            vm_uuid,
        )

    def _op_vm_create(self, vm_uuid: str, dom: Json) -> None:
        if self.faults.no_space and dom.get("blockDevs"):
            raise TaskError("Create VM %@ failed: %@", dom["name"], "insufficient space")
        tags = dom.get("tags", "")
        fields = {**dom, "tags": [t for t in str(tags).split(",") if t]}
        fields.setdefault("state", "SHUTOFF")
        self._add_vm(vm_uuid, fields)
        for bd in dom.get("blockDevs", []):
            self._add_disk(
                new_uuid(),
                vm_uuid,
                bd.get("type", "VIRTIO_DISK"),
                int(bd.get("capacity", 0)),
                slot=bd.get("slot"),
                cache_mode=bd.get("cacheMode", "WRITETHROUGH"),
            )
        for i, nd in enumerate(dom.get("netDevs", [])):
            nic = _nic(vm_uuid, i)
            nic.update({k: nd[k] for k in ("type", "vlan", "macAddress", "connected") if k in nd})
            self.s["vms"][vm_uuid]["netDevs"].append(nic)

    def request_vm_update(self, vm_uuid: str, body: Json, session: str) -> str:
        vm = self._rest_vm(vm_uuid)
        self.check_vm_idle(vm_uuid)
        return self.start_task(
            "update",
            "vm_update",
            {"vm_uuid": vm_uuid, "fields": body},
            vms=[vm_uuid],
            description="Update VM %@",
            params=[vm["name"]],
            object_uuid=vm_uuid,
            session=session,
        )

    def _op_vm_update(self, vm_uuid: str, fields: Json) -> None:
        vm = self.s["vms"].get(vm_uuid)
        if vm is None:
            raise TaskError("VM %@ no longer exists", vm_uuid)
        for key in ("name", "description", "mem", "numVCPU", "machineType", "bootDevices"):
            if key in fields:
                vm[key] = fields[key]
        if "tags" in fields:
            vm["tags"] = [t for t in str(fields["tags"]).split(",") if t]

    def request_vm_delete(self, vm_uuid: str, session: str) -> str:
        vm = self._rest_vm(vm_uuid)
        self.check_vm_idle(vm_uuid)
        return self.start_task(
            "delete",
            "vm_delete",
            {"vm_uuid": vm_uuid},
            vms=[vm_uuid],
            description="Delete VM %@",
            params=[vm["name"]],
            object_uuid=vm_uuid,
            session=session,
        )

    def _op_vm_delete(self, vm_uuid: str) -> None:
        vm = self.s["vms"].pop(vm_uuid, None)
        if vm is None:
            return
        for snap_uuid in list(vm["snapUUIDs"]):
            self.drop_snapshot(snap_uuid)
        for d in self.vm_disks(vm_uuid):
            self._delete_disk(d)

    def request_vm_actions(self, items: Any, session: str) -> str:
        if not isinstance(items, list) or not items:
            raise RestError(400, "Body must be a list of actions")
        vms = []
        for item in items:
            if not isinstance(item, dict):
                raise RestError(400, "Each action must be an object")
            self._rest_vm(str(item.get("virDomainUUID")))
            if item.get("actionType") not in POWER_STATES:
                raise RestError(400, f"Unknown actionType {item.get('actionType')!r}")
            vms.append(item["virDomainUUID"])
        for vm_uuid in vms:
            self.check_vm_idle(vm_uuid)
        return self.start_task(
            "action",
            "vm_actions",
            {"items": items},
            vms=vms,
            description="VM power action %@",
            params=[str(items[0]["actionType"])],
            object_uuid=vms[0],
            session=session,
        )

    def _op_vm_actions(self, items: list[Json]) -> None:
        for item in items:
            vm = self.s["vms"].get(item["virDomainUUID"])
            new_state = POWER_STATES[item["actionType"]]
            if vm is not None and new_state:
                vm["state"] = vm["desiredDisposition"] = new_state

    def request_disk_create(self, body: Json, session: str) -> tuple[str, str]:
        if "description" in body:
            raise RestError(400, "Unknown field: description")
        vm_uuid = str(body.get("virDomainUUID"))
        vm = self._rest_vm(vm_uuid, status=400)
        dtype = _check_disk_type(body.get("type", "VIRTIO_DISK"))
        capacity = _int_field(body, "capacity")
        self.check_vm_idle(vm_uuid)
        disk_uuid = new_uuid()
        args: Json = {
            "disk_uuid": disk_uuid,
            "vm_uuid": vm_uuid,
            "dtype": dtype,
            "capacity": capacity,
            "slot": body.get("slot"),
            "cache_mode": body.get("cacheMode", "WRITETHROUGH"),
        }
        tag = self.start_task(
            "create",
            "disk_create",
            args,
            vms=[vm_uuid],
            description="Add block device to VM %@",
            params=[vm["name"]],
            object_uuid=disk_uuid,
            session=session,
        )
        return tag, disk_uuid

    def _op_disk_create(
        self,
        disk_uuid: str,
        vm_uuid: str,
        dtype: str,
        capacity: int,
        slot: int | None,
        cache_mode: str,
    ) -> None:
        if vm_uuid not in self.s["vms"]:
            raise TaskError("VM %@ no longer exists", vm_uuid)
        if self.faults.no_space:
            raise TaskError("Create block device failed: %@", "insufficient space")
        self._add_disk(disk_uuid, vm_uuid, dtype, capacity, slot=slot, cache_mode=cache_mode)

    def request_disk_clone(self, src_uuid: str, body: Json, session: str) -> tuple[str, str]:
        src = self.s["disks"].get(src_uuid)
        if src is None:
            raise RestError(404, f"Block device {src_uuid} not found")
        # Older builds call it snapshotUUID; accept both (hcbak keeps it in one place).
        snap_uuid = body.get("snapUUID") or body.get("snapshotUUID") or ""
        template = body.get("template")
        if not isinstance(template, dict):
            raise RestError(400, "Body needs a template object")
        target = str(template.get("virDomainUUID"))
        vm = self._rest_vm(target, status=400)
        if snap_uuid:
            snap = self.s["snapshots"].get(snap_uuid)
            if snap is None:
                raise RestError(404, f"Snapshot {snap_uuid} not found")
            try:
                self.snapshot_file(snap_uuid, src_uuid)
            except KeyError:
                raise RestError(400, f"Block device {src_uuid} is not part of that snapshot")
            src_capacity = next(
                b["capacity"] for b in snap["domain"]["blockDevs"] if b["uuid"] == src_uuid
            )
        elif src["deleted"]:
            raise RestError(404, f"Block device {src_uuid} not found")
        else:
            src_capacity = src["capacity"]
        capacity = int(template.get("capacity") or src_capacity)
        if capacity < src_capacity:
            raise RestError(400, "template.capacity is smaller than the source disk")
        self.check_vm_idle(target)
        new = new_uuid()
        options = body.get("options") or {}
        args: Json = {
            "new_uuid": new,
            "src_uuid": src_uuid,
            "snap_uuid": snap_uuid,
            "vm_uuid": target,
            "dtype": _check_disk_type(template.get("type", src["type"])),
            "capacity": capacity,
            "slot": template.get("slot"),
            # Quirk: regenerateDiskID defaults to true; recorded for tests to check.
            "regenerate": bool(options.get("regenerateDiskID", True)),
        }
        # Quirk: template.name is silently dropped (never reaches the new device).
        tag = self.start_task(
            "clone",
            "disk_clone",
            args,
            vms=[target],
            description="Clone block device %@ to VM %@",
            params=[src_uuid, vm["name"]],
            object_uuid=new,
            session=session,
        )
        return tag, new

    def _op_disk_clone(
        self,
        new_uuid: str,
        src_uuid: str,
        snap_uuid: str,
        vm_uuid: str,
        dtype: str,
        capacity: int,
        slot: int | None,
        regenerate: bool,
    ) -> None:
        if self.faults.no_space:
            raise TaskError("Clone of block device %@ failed: %@", src_uuid, "insufficient space")
        if vm_uuid not in self.s["vms"]:
            raise TaskError("VM %@ no longer exists", vm_uuid)
        try:
            if snap_uuid:
                source = self.snapshot_file(snap_uuid, src_uuid)
                serial = int(source.stem.rsplit("@", 1)[1])
            else:
                source, serial = self.store.live_path(self._live_disk(src_uuid)["uuid"]), -1
        except KeyError:
            raise TaskError("Source of clone %@ no longer exists", src_uuid)
        self._add_disk(new_uuid, vm_uuid, dtype, capacity, slot=slot, source=source)
        d = self.s["disks"][new_uuid]
        d.update(regenerateDiskID=regenerate, sourceSnapshotUUID=snap_uuid)
        # The clone's own write log starts with everything its source held.
        epochs = self.s["writelog"].get(src_uuid, {})
        held = [tuple(i) for e, iv in epochs.items() if serial < 0 or int(e) < serial for i in iv]
        self.log_write(new_uuid, 0, merge_intervals(held))

    def request_disk_update(self, disk_uuid: str, body: Json, session: str) -> str:
        d = self._rest_disk(disk_uuid)
        if "description" in body:
            raise RestError(400, "Unknown field: description")
        if "capacity" in body and int(body["capacity"]) < d["capacity"]:
            raise RestError(400, "Block devices can only grow")
        self.check_vm_idle(d["vm"])
        return self.start_task(
            "update",
            "disk_update",
            {"disk_uuid": disk_uuid, "fields": body},
            vms=[d["vm"]],
            description="Update block device %@",
            params=[disk_uuid],
            object_uuid=disk_uuid,
            session=session,
        )

    def _op_disk_update(self, disk_uuid: str, fields: Json) -> None:
        d = self._live_disk(disk_uuid)
        if "capacity" in fields and int(fields["capacity"]) != d["capacity"]:
            self.store.resize(disk_uuid, int(fields["capacity"]))
            d["capacity"] = int(fields["capacity"])
        for key in ("cacheMode", "disableSnapshotting", "name", "readOnly"):
            if key in fields:
                d[key] = fields[key]

    def request_disk_delete(self, disk_uuid: str, session: str) -> str:
        d = self._rest_disk(disk_uuid)
        self.check_vm_idle(d["vm"])
        return self.start_task(
            "delete",
            "disk_delete",
            {"disk_uuid": disk_uuid},
            vms=[d["vm"]],
            description="Delete block device %@",
            params=[disk_uuid],
            object_uuid=disk_uuid,
            session=session,
        )

    def _op_disk_delete(self, disk_uuid: str) -> None:
        d = self.s["disks"].get(disk_uuid)
        if d is not None and not d["deleted"]:
            self._delete_disk(d)

    def _delete_disk(self, d: Json) -> None:
        """Live data goes; snapshot layers (own hard links) and the write log stay."""
        self.store.delete(d["uuid"])
        vm = self.s["vms"].get(d["vm"])
        if vm and d["uuid"] in vm["bootDevices"]:
            vm["bootDevices"].remove(d["uuid"])
        d.update(deleted=True, vm="")
        self.touch()

    # --- virtual disks (upload) ------------------------------------------------------------
    def begin_upload(self, filename: str) -> tuple[str, Path]:
        with self.lock:
            if self.faults.no_space:
                raise RestError(500, "Insufficient free space on the cluster")
            vd_uuid = new_uuid()
            self.s["vdisks"][vd_uuid] = {
                "uuid": vd_uuid,
                "name": f"uploading-{filename}",
                "final": filename,
                "capacity": 0,
            }
            self.touch()
            return vd_uuid, self.vd_dir / f"{vd_uuid}.upload"

    def abort_upload(self, vd_uuid: str) -> None:
        with self.lock:
            self.s["vdisks"].pop(vd_uuid, None)
            (self.vd_dir / f"{vd_uuid}.upload").unlink(missing_ok=True)
            self.touch()

    def finish_upload(self, vd_uuid: str, session: str) -> str:
        with self.lock:
            vd = self.s["vdisks"][vd_uuid]
            vd["name"] = f"converting-{vd['final']}"
            return self.start_task(
                "upload",
                "vd_convert",
                {"vd_uuid": vd_uuid},
                vms=[],
                description="Upload virtual disk %@",
                params=[vd["final"]],
                object_uuid=vd_uuid,
                session=session,
            )

    def _op_vd_convert(self, vd_uuid: str) -> None:
        vd = self.s["vdisks"].get(vd_uuid)
        if vd is None:
            raise TaskError("Virtual disk %@ no longer exists", vd_uuid)
        upload, raw = self.vd_dir / f"{vd_uuid}.upload", self.vd_dir / f"{vd_uuid}.img"
        ext = vd["final"].rsplit(".", 1)[-1].lower() if "." in vd["final"] else ""
        try:
            if ext in ("img", "raw"):
                os.replace(upload, raw)
                vd["capacity"] = raw.stat().st_size
            elif ext == "qcow2":
                vd["capacity"] = qcow2_to_raw(upload, raw)
                upload.unlink()
            else:
                raise TaskError("Conversion of %@ failed: %@", vd["final"], f"format {ext!r}")
        except Qcow2Error as exc:
            self.s["vdisks"].pop(vd_uuid)
            upload.unlink(missing_ok=True)
            raise TaskError("Conversion of %@ failed: %@", vd["final"], str(exc))
        except TaskError:
            self.s["vdisks"].pop(vd_uuid)
            upload.unlink(missing_ok=True)
            raise
        vd["name"] = vd["final"]

    def request_vd_attach(self, vd_uuid: str, body: Json, session: str) -> tuple[str, str]:
        vd = self.s["vdisks"].get(vd_uuid)
        if vd is None:
            raise RestError(404, f"Virtual disk {vd_uuid} not found")
        if vd["name"] != vd["final"]:
            raise RestError(400, f"Virtual disk {vd_uuid} is still {vd['name']}")
        template = body.get("template")
        if not isinstance(template, dict):
            raise RestError(400, "Body needs a template object")
        target = str(template.get("virDomainUUID"))
        vm = self._rest_vm(target, status=400)
        capacity = int(template.get("capacity") or vd["capacity"])
        if capacity < vd["capacity"]:
            raise RestError(400, "template.capacity is smaller than the virtual disk")
        self.check_vm_idle(target)
        options = body.get("options") or {}
        new = new_uuid()
        args: Json = {
            "new_uuid": new,
            "vd_uuid": vd_uuid,
            "vm_uuid": target,
            "dtype": _check_disk_type(template.get("type", "VIRTIO_DISK")),
            "capacity": capacity,
            "slot": template.get("slot"),
            "regenerate": bool(options.get("regenerateDiskID", True)),
            "read_only": bool(options.get("readOnly", False)),
        }
        tag = self.start_task(
            "attach",
            "vd_attach",
            args,
            vms=[target],
            description="Attach virtual disk %@ to VM %@",
            params=[vd["name"], vm["name"]],
            object_uuid=new,
            session=session,
        )
        return tag, new

    def _op_vd_attach(
        self,
        new_uuid: str,
        vd_uuid: str,
        vm_uuid: str,
        dtype: str,
        capacity: int,
        slot: int | None,
        regenerate: bool,
        read_only: bool,
    ) -> None:
        if self.faults.no_space:
            raise TaskError("Attach of virtual disk %@ failed: %@", vd_uuid, "insufficient space")
        raw = self.vd_dir / f"{vd_uuid}.img"
        if vd_uuid not in self.s["vdisks"] or vm_uuid not in self.s["vms"]:
            raise TaskError("Virtual disk %@ or its VM no longer exists", vd_uuid)
        if slot is not None and any(d["slot"] == slot for d in self.vm_disks(vm_uuid)):
            raise TaskError("Slot %@ is already used on VM %@", str(slot), vm_uuid)
        self._add_disk(
            new_uuid, vm_uuid, dtype, capacity, slot=slot, source=raw, read_only=read_only
        )
        d = self.s["disks"][new_uuid]
        d.update(regenerateDiskID=regenerate, sourceVirtualDiskUUID=vd_uuid)
        self.log_write(new_uuid, 0, _data_extents(self.store.live_path(new_uuid)))

    def request_vd_delete(self, vd_uuid: str, session: str) -> str:
        vd = self.s["vdisks"].get(vd_uuid)
        if vd is None:
            raise RestError(404, f"Virtual disk {vd_uuid} not found")
        return self.start_task(
            "delete",
            "vd_delete",
            {"vd_uuid": vd_uuid},
            vms=[],
            description="Delete virtual disk %@",
            params=[vd["name"]],
            object_uuid=vd_uuid,
            session=session,
        )

    def _op_vd_delete(self, vd_uuid: str) -> None:
        self.s["vdisks"].pop(vd_uuid, None)
        for suffix in (".img", ".upload"):
            (self.vd_dir / f"{vd_uuid}{suffix}").unlink(missing_ok=True)

    # --- helpers ------------------------------------------------------------------------
    def _rest_vm(self, vm_uuid: str, status: int = 404) -> Json:
        vm = self.s["vms"].get(vm_uuid)
        if vm is None:
            raise RestError(status, f"VM {vm_uuid} not found")
        return vm

    def _rest_disk(self, disk_uuid: str) -> Json:
        d = self.s["disks"].get(disk_uuid)
        if d is None or d["deleted"]:
            raise RestError(404, f"Block device {disk_uuid} not found")
        return d

    def copy_out(self, src: Path, dest: Path) -> None:
        sparse_copy(src, dest)


def _user(name: str, password: str, roles: tuple[str, ...] | list[str]) -> Json:
    return {"uuid": new_uuid(), "username": name, "password": password, "roles": list(roles)}


def _nic(vm_uuid: str, i: int) -> Json:
    mac = "7c:4c:58:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))
    return {
        "uuid": new_uuid(),
        "virDomainUUID": vm_uuid,
        "type": "VIRTIO",
        "vlan": 0,
        "macAddress": mac,
        "connected": True,
        "ipv4Addresses": [],
    }


def _check_disk_type(value: Any) -> str:
    if value not in DISK_TYPES:
        raise RestError(400, f"Unknown block device type {value!r}")
    return str(value)


def _int_field(body: Json, key: str) -> int:
    value = body.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise RestError(400, f"Field {key} must be a non-negative integer")
    return value


def _allocated(path: Path) -> int:
    try:
        return path.stat().st_blocks * 512
    except FileNotFoundError:
        return 0


def _data_extents(path: Path) -> list[Interval]:
    """Allocated byte ranges of a sparse file (SEEK_DATA/SEEK_HOLE)."""
    out: list[Interval] = []
    with open(path, "rb") as f:
        size, pos, fd = os.fstat(f.fileno()).st_size, 0, f.fileno()
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start, end))
            pos = end
    return out
