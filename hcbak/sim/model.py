"""The simulated cluster's state and everything that changes it (no HTTP here).

`ClusterModel` owns the JSON metadata (<state>/state.json), the disk files
(`DiskStore`) and the task queue. REST handlers (api.py) validate requests and call
`self.ops` (operations.py): `request_*` methods check the request *now* (4xx) and
queue a task whose effect runs when the task completes (QUEUED -> RUNNING ->
COMPLETE over the task delay), like HyperCore: a snapshot exists only once its task
is COMPLETE.
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
from pathlib import Path
from typing import Any

from hcbak.sim.disks import DiskStore, Interval, merge_intervals, read_range
from hcbak.sim.faults import Faults
from hcbak.sim.operations import Operations
from hcbak.sim.records import (
    ALL_ROLES,
    BACKUP_ROLES,
    DEFAULT_AFFINITY,
    GUEST_AGENT_ABSENT,
    GUEST_AGENT_AVAILABLE,
    ICOS_VERSION,
    MACHINE_TYPE_KEYWORDS,
    MAX_TASKS,
    NVRAM_SIZE,
    TERMINAL,
    V2_QUIESCE_SINCE,
    Json,
    RestError,
    TaskError,
    allocated_bytes,
    new_uuid,
    nic_record,
    session_uuid,
    user_record,
)


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
        self.s.setdefault("replications", {})  # state files from before replication
        self.s.setdefault("connections", {})
        while len(self.s["nodes"]) < nodes:
            self.s["nodes"].append({"uuid": new_uuid()})
        self.ports: list[int] = [0] * nodes
        self.icos_version = ICOS_VERSION  # what GET /Cluster says; v2 API from 9.7.1
        self.sessions: dict[str, str] = {}
        self._save_lock = threading.Lock()
        # Tags of unfinished tasks, so the 5 ms ticker never scans finished ones.
        self._pending = [t for t, r in self.s["tasks"].items() if r["state"] not in TERMINAL]
        self.ops = Operations(self)
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
                "admin": user_record("admin", secrets.token_urlsafe(12), ["Admin"]),
                "hcbak-backup": user_record(
                    "hcbak-backup", secrets.token_urlsafe(12), BACKUP_ROLES
                ),
                "auditor": user_record("auditor", secrets.token_urlsafe(12), ["Read"]),
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
            "replications": {},
            "connections": {},
        }

    def _load(self) -> Json | None:
        try:
            data: Json = json.loads(self._path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        return data

    def save(self) -> None:
        """Atomic write of the metadata (temp file + rename) when something changed."""
        with self._save_lock:  # the ticker and stop() may both save
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
                "sessionID": session_uuid(session),
                "nodeUUIDs": [self.s["nodes"][0]["uuid"]],
                "_kind": kind,
                "_op": op,
                "_args": args,
                "_vms": vms,
                "_start": now,
                "_due": now + self.task_delay,
            }
            self._pending.append(tag)
            self._note_latest_task(tag, vms)
            self.touch()
            if self.task_delay <= 0:
                self._finish(self.s["tasks"][tag])
            return tag

    def advance(self) -> None:
        """Move tasks along their timeline; run the effect of those that are due."""
        now = time.time()
        with self.lock:
            for tag in list(self._pending):
                task = self.s["tasks"][tag]
                if now >= task["_due"]:
                    self._finish(task)
                elif task["state"] == "QUEUED" and now >= (task["_start"] + task["_due"]) / 2:
                    task.update(state="RUNNING", progressPercent=50, modified=int(now))
                    self.touch()

    def _finish(self, task: Json) -> None:
        try:
            if self.faults.task_fails(task["_kind"]):
                raise TaskError("Task %@ failed: injected fault", task["_kind"])
            getattr(self.ops, "_op_" + task["_op"])(**task["_args"])
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
        self._note_latest_task(task["taskTag"], task["_vms"])  # a VM its task created
        if task["taskTag"] in self._pending:
            self._pending.remove(task["taskTag"])
        self._forget_old_tasks()
        self.touch()

    def _note_latest_task(self, tag: str, vms: list[str]) -> None:
        """VirDomain.latestTaskTag: the newest task of each VM it concerns."""
        for vm_uuid in vms:
            vm = self.s["vms"].get(vm_uuid)
            if vm is not None and int(vm.get("_latestTaskTag") or 0) <= int(tag):
                vm["_latestTaskTag"] = tag

    def _forget_old_tasks(self) -> None:
        """Keep the newest MAX_TASKS records (real clusters also expire task tags)."""
        tasks = self.s["tasks"]
        if len(tasks) <= MAX_TASKS:
            return
        for tag in list(tasks)[: len(tasks) - MAX_TASKS]:
            if tasks[tag]["state"] in TERMINAL:
                del tasks[tag]

    def task_record(self, tag: str, *, advance: bool = True) -> Json | None:
        if advance:
            self.advance()
        with self.lock:
            task = self.s["tasks"].get(str(tag))
            return None if task is None else {k: v for k, v in task.items() if k[0] != "_"}

    def check_vm_idle(self, vm_uuid: str) -> None:
        """HyperCore answers 500 to a mutation on a VM that still has a task running."""
        self.advance()
        for task in (self.s["tasks"][t] for t in self._pending):
            if vm_uuid in task["_vms"]:
                raise RestError(
                    500, f"Another task ({task['taskTag']}) is in progress for VM {vm_uuid}"
                )

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Block until no task is pending (tests and shutdown)."""
        end = time.time() + timeout
        while time.time() < end:
            self.advance()
            with self.lock:
                if not self._pending:
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
        # Keys the vendor collection reads (module_utils/vm.py); older state files lack
        # some, so they are filled here rather than only at creation.
        rec.setdefault("operatingSystem", "os_other")
        rec.setdefault("attachGuestToolsISO", False)
        rec.setdefault("cloudInitData", None)
        rec.setdefault("stats", [])
        rec.setdefault("affinityStrategy", dict(DEFAULT_AFFINITY))
        rec["machineTypeKeyword"] = MACHINE_TYPE_KEYWORDS.get(vm["machineType"], "bios")
        rec["guestAgentState"] = self.guest_agent_state(vm)
        latest = self.task_record(vm.get("_latestTaskTag", ""), advance=False)
        rec["latestTaskTag"] = latest or {}
        return rec

    def disk_record(self, d: Json) -> Json:
        return {
            "uuid": d["uuid"],
            "virDomainUUID": d["vm"],
            "type": d["type"],
            "cacheMode": d["cacheMode"],
            "capacity": d["capacity"],
            "allocation": allocated_bytes(self.store.live_path(d["uuid"])),
            "shareUUID": "",
            "path": f"scribe/{d['uuid']}",
            "slot": d["slot"],
            "name": d["name"],
            "disableSnapshotting": d["disableSnapshotting"],
            "tieringPriorityFactor": d.get("tieringPriorityFactor", 8),
            "mountPoints": list(d.get("mountPoints") or []),
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
        return {**self.s["cluster"], "icosVersion": self.icos_version}

    def serves_v2(self) -> bool:
        """Whether this cluster version has the v2 API (snapshot `attemptQuiesce`)."""
        parts = self.icos_version.split(".")[:3]
        try:
            return tuple(int(p) for p in parts) >= V2_QUIESCE_SINCE
        except ValueError:
            return False

    def guest_agent_state(self, vm: Json) -> str:
        """A guest agent answers only in a running VM that has guest tools installed."""
        running = vm.get("state") == "RUNNING"
        return GUEST_AGENT_AVAILABLE if vm.get("_guestTools") and running else GUEST_AGENT_ABSENT

    def vd_record(self, vd: Json) -> Json:
        return {
            "uuid": vd["uuid"],
            "name": vd["name"],
            # capacityBytes, not capacity: the vendor's module_utils/virtual_disk.py
            # reads it with [] (a real record without it would crash that client).
            "capacityBytes": vd["capacity"],
            "blockSize": 1048576,
            "totalAllocationBytes": vd["capacity"],
            "replicationFactor": 2,
        }

    def connection_records(self) -> list[Json]:
        """GET /RemoteClusterConnection (keys from the vendor's module_utils/remote_cluster.py)."""
        return [copy.deepcopy(c) for c in self.s["connections"].values()]

    def replication_records(self) -> list[Json]:
        """GET /VirDomainReplication (keys from the vendor's module_utils/replication.py)."""
        return [copy.deepcopy(r) for r in self.s["replications"].values()]

    def remote_connection(self) -> str:
        """The connection to the (simulated, absent) remote cluster replicas come from."""
        if not self.s["connections"]:
            conn = new_uuid()
            self.s["connections"][conn] = {
                "uuid": conn,
                "remoteClusterInfo": {"clusterName": "sim-remote"},
                "connectionStatus": "ESTABLISHED",
                "replicationOK": True,
                "remoteNodeIPs": ["127.0.0.2"],
                "remoteNodeUUIDs": [new_uuid()],
            }
            self.touch()
        return next(iter(self.s["connections"]))

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
        guest_tools: bool = False,
    ) -> str:
        with self.lock:
            vm_uuid = new_uuid()
            self.add_vm(
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
            vm["_guestTools"] = guest_tools  # its agent answers while the VM runs
            for slot, cap in enumerate(disks):
                self.add_disk(new_uuid(), vm_uuid, disk_type, cap, slot=slot)
            if cdrom:
                self.add_disk(new_uuid(), vm_uuid, "IDE_CDROM", 0, slot=len(disks))
            if uefi:
                nvram = self.add_disk(new_uuid(), vm_uuid, "NVRAM", NVRAM_SIZE, slot=-1)
                self.store.write(nvram, 0, b"NVRAM:" + name.encode() + bytes(26))
            data = [d["uuid"] for d in self.vm_disks(vm_uuid) if d["type"] == disk_type]
            vm["bootDevices"] = data[:1]
            for i in range(nics):
                vm["netDevs"].append(nic_record(vm_uuid, i))
            self.touch()
            return vm_uuid

    def add_vm(self, vm_uuid: str, fields: Json) -> None:
        self.s["vms"][vm_uuid] = {
            "uuid": vm_uuid,
            "name": fields["name"],
            "description": fields.get("description", ""),
            "operatingSystem": fields.get("operatingSystem") or "os_other",
            "attachGuestToolsISO": bool(fields.get("attachGuestToolsISO", False)),
            "cloudInitData": fields.get("cloudInitData"),
            "stats": [],
            "affinityStrategy": dict(DEFAULT_AFFINITY),
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

    def add_disk(
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
            d = self.live_disk(disk_uuid)
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

    def live_disk(self, disk_uuid: str) -> Json:
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
