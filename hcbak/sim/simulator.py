"""`Simulator`: the Python face of the simulated cluster (tests, demo, benchmarks).

    with Simulator(tmp_path / "sim") as sim:
        vm = sim.create_vm("web01", [4 << 20])
        ...  # point hcbak at sim.node_addresses, pin sim.fingerprints

It starts one HTTPS node per port, a ticker thread that moves tasks along and saves
the metadata, and offers guest-side control (writes, fills, faults) that the REST
API deliberately does not have. docs/simulator.md documents every call.
"""

from __future__ import annotations

import base64
import random
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from hcbak.sim.certs import ensure_cert, fingerprint
from hcbak.sim.disks import read_range, sparse_copy
from hcbak.sim.faults import Faults
from hcbak.sim.model import ClusterModel
from hcbak.sim.records import Json, new_uuid
from hcbak.sim.server import Node

REQUEST_LOG_LIMIT = 100_000


class Simulator:
    """A running simulated HyperCore cluster; use as a context manager."""

    def __init__(
        self,
        state_dir: Path,
        nodes: int = 3,
        task_delay: float = 0.02,
        *,
        port_base: int | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.port_base = port_base
        self.faults = Faults(nodes, self._on_node_change)
        self.model = ClusterModel(self.state_dir, self.faults, task_delay, nodes)
        cert_dir = self.state_dir / "certs"
        cert_dir.mkdir(exist_ok=True)
        self.cert_paths: list[Path] = []
        for i in range(nodes):
            cert, key = cert_dir / f"node{i}.pem", cert_dir / f"node{i}.key"
            ensure_cert(cert, key, f"sim-node-{i}")
            self.cert_paths.append(cert)
        rogue = (cert_dir / "rogue.pem", cert_dir / "rogue.key")
        ensure_cert(*rogue, "rogue")
        self.fingerprints = [fingerprint(p) for p in self.cert_paths]
        self._nodes = [
            Node(i, self, c, c.with_suffix(".key"), rogue) for i, c in enumerate(self.cert_paths)
        ]
        self.requests: list[tuple[int, str, str, Any]] = []
        self._req_lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    # --- lifecycle --------------------------------------------------------------------
    def start(self) -> Simulator:
        for i, node in enumerate(self._nodes):
            node.start(self.port_base + i if self.port_base else 0)
        self.model.ports = [n.port for n in self._nodes]
        self._stop.clear()
        self._ticker = threading.Thread(target=self._tick, name="sim-ticker", daemon=True)
        self._ticker.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        # Each listener needs up to one poll interval to stop: close them in parallel.
        closers = [threading.Thread(target=node.close) for node in self._nodes]
        for t in closers:
            t.start()
        for t in closers:
            t.join()
        if self._ticker is not None:
            self._ticker.join(timeout=5)
        self.model.save()

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _tick(self) -> None:
        """Tasks complete on time even when nobody polls; metadata saved regularly."""
        last_save = 0.0
        while not self._stop.wait(0.005):
            self.model.advance()
            if time.monotonic() - last_save > 0.25:
                self.model.save()
                last_save = time.monotonic()

    def _on_node_change(self, index: int, mode: str) -> None:
        self._nodes[index].set_mode(mode)

    # --- addresses and credentials --------------------------------------------------------
    @property
    def node_addresses(self) -> list[str]:
        return [f"127.0.0.1:{n.port}" for n in self._nodes]

    @property
    def node_urls(self) -> list[str]:
        return [f"https://127.0.0.1:{n.port}" for n in self._nodes]

    @property
    def admin(self) -> tuple[str, str]:
        return "admin", self.model.s["users"]["admin"]["password"]

    @property
    def backup_user(self) -> tuple[str, str]:
        """Least privilege: Read, Backup, VM Create/Edit, VM Delete, VM Power Controls."""
        return "hcbak-backup", self.model.s["users"]["hcbak-backup"]["password"]

    @property
    def readonly_user(self) -> tuple[str, str]:
        """Only the Read role: every mutation gets 403."""
        return "auditor", self.model.s["users"]["auditor"]["password"]

    @property
    def admin_token(self) -> str:
        """Value of the X-Sim-Admin-Token header for the /sim/ control endpoint."""
        return str(self.model.s["admin_token"])

    @property
    def device_root(self) -> Path:
        return self.model.store.device_root

    @property
    def worker_vm_uuid(self) -> str:
        return str(self.model.s["worker"])

    def check_admin_token(self, token: str) -> bool:
        import secrets

        return secrets.compare_digest(token, self.admin_token)

    def log_request(self, node: int, method: str, path: str, body: Any) -> None:
        if isinstance(body, dict) and "password" in body:
            body = {**body, "password": "***"}  # the request log never holds secrets
        with self._req_lock:
            self.requests.append((node, method, path, body))
            if len(self.requests) > REQUEST_LOG_LIMIT:
                del self.requests[: REQUEST_LOG_LIMIT // 2]

    # --- setup (control API) ------------------------------------------------------------
    def create_vm(
        self,
        name: str,
        disks: list[int] | tuple[int, ...] = (),
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
        guest_tools: bool = False,
    ) -> str:
        """A VM with sparse (all-zero) disks in slot order; returns its uuid.
        `guest_tools`: its guest agent answers while it runs (guestAgentState
        AVAILABLE), so a snapshot with attemptQuiesce is quiesced."""
        return self.model.create_vm(
            name,
            list(disks),
            tags=tags,
            mem=mem,
            vcpus=vcpus,
            machine_type=machine_type,
            disk_type=disk_type,
            uefi=uefi,
            cdrom=cdrom,
            nics=nics,
            state=state,
            description=description,
            guest_tools=guest_tools,
        )

    def set_cluster_version(self, version: str) -> None:
        """What GET /Cluster answers as icosVersion; from 9.7.1 the node also serves
        the v2 snapshot call that takes attemptQuiesce (older: /rest/v2 is a 404)."""
        with self.model.lock:
            self.model.icos_version = version

    def snapshot_quiesced(self, snapshot_uuid: str) -> bool:
        """Whether the simulator quiesced the guest for this snapshot (not in the REST
        record: whether a real record says so is not known)."""
        with self.model.lock:
            return bool(self.model.s["snapshots"][snapshot_uuid].get("_quiesced"))

    def create_replica(self, name: str, disks: list[int] | tuple[int, ...] = ()) -> str:
        """A replication-target VM: sourceVirDomainUUID set, REST snapshots refused.
        Its source lives on a remote cluster, reached by a RemoteClusterConnection."""
        with self.model.lock:
            self.model.remote_connection()
        return self.model.create_vm(name, list(disks), state="SHUTOFF", source_vm_uuid=new_uuid())

    def replicate_snapshot(self, vm_uuid: str, label: str = "") -> str:
        """A snapshot "arriving by replication" (replication=true, no task)."""
        with self.model.lock:
            snap = new_uuid()
            vm = self.model.vm(vm_uuid)
            self.model.take_snapshot(snap, vm["uuid"], label or f"replica-{snap[:8]}", "USER", True)
            return snap

    def set_disable_snapshotting(self, disk_uuid: str, value: bool = True) -> None:
        self.model.set_disable_snapshotting(disk_uuid, value)

    # --- inspection ---------------------------------------------------------------------
    def vm_record(self, uuid_or_name: str) -> Json:
        """Exactly what GET /VirDomain/{uuid} returns as its only element."""
        with self.model.lock:
            return self.model.vm_record(self.model.vm(uuid_or_name)["uuid"])

    def disk_uuids(self, vm: str) -> list[str]:
        """Data disks (VIRTIO/SCSI/IDE_DISK) of a VM (uuid or name), in slot order."""
        with self.model.lock:
            vm_uuid = self.model.vm(vm)["uuid"]
            data = ("VIRTIO_DISK", "SCSI_DISK", "IDE_DISK")
            return [d["uuid"] for d in self.model.vm_disks(vm_uuid) if d["type"] in data]

    def vms(self) -> list[Json]:
        with self.model.lock:
            return [self.model.vm_record(u) for u in self.model.s["vms"]]

    def snapshots(self, vm_uuid: str | None = None) -> list[Json]:
        with self.model.lock:
            return [
                self.model.snapshot_record(s)
                for s in self.model.snapshots_sorted()
                if vm_uuid is None or s["domainUUID"] == vm_uuid
            ]

    def virtual_disks(self) -> list[Json]:
        with self.model.lock:
            return [self.model.vd_record(v) for v in self.model.s["vdisks"].values()]

    def block_devices(self, include_deleted: bool = False) -> list[Json]:
        """Internal block device records, incl. fields the REST API does not show:
        `vm`, `regenerateDiskID` (None when created without a choice),
        `sourceSnapshotUUID`, `sourceVirtualDiskUUID`, `deleted`, `serial`."""
        with self.model.lock:
            return [
                dict(d)
                for d in self.model.s["disks"].values()
                if include_deleted or not d["deleted"]
            ]

    def task(self, tag: str | int) -> Json | None:
        return self.model.task_record(str(tag))

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Block until every queued task has finished."""
        self.model.wait_idle(timeout)

    def finish_task(self, tag: str | int) -> None:
        """End an unfinished task now (tests that hold a VM busy until they release it)."""
        with self.model.lock:
            task = self.model.s["tasks"].get(str(tag))
            if task is not None:
                task["_due"] = 0
        self.model.advance()

    # --- guest I/O ----------------------------------------------------------------------
    def write(self, disk_uuid: str, offset: int, data: bytes) -> None:
        """A guest write to the live disk (preserves existing snapshots' bytes)."""
        self.model.write(disk_uuid, offset, data)

    def fill(
        self,
        disk_uuid: str,
        seed: int = 0,
        *,
        written: float = 0.6,
        compressible: float = 0.6,
        extent: int = 256 << 10,
    ) -> None:
        """Realistic content: a `written` fraction of extents holds data (the rest stays
        sparse/zero); of those, `compressible` are text-like, the others random. The
        same seed and capacity give the same bytes (so two VMs can share blocks)."""
        with self.model.lock:
            capacity = self.model.s["disks"][disk_uuid]["capacity"]
        rng = random.Random(seed)
        words = [rng.randbytes(rng.randint(3, 9)).hex().encode() for _ in range(64)]
        for offset in range(0, capacity, extent):
            size = min(extent, capacity - offset)
            roll = rng.random()
            if roll >= written:
                continue
            if rng.random() < compressible:
                line = b" ".join(rng.choice(words) for _ in range(12)) + b"\n"
                data = (line * (size // len(line) + 1))[:size]
            else:
                data = rng.randbytes(size)
            self.model.write(disk_uuid, offset, data)

    def read_live(self, disk_uuid: str, offset: int, length: int) -> bytes:
        with self.model.lock:
            return read_range(self.model.store.live_path(disk_uuid), offset, length)

    def read_snapshot(self, snapshot_uuid: str, disk_uuid: str, offset: int, length: int) -> bytes:
        return self.model.read_snapshot(snapshot_uuid, disk_uuid, offset, length)

    def snapshot_image(self, snapshot_uuid: str, disk_uuid: str, dest: Path) -> None:
        """Materialise a disk's content in a snapshot to a (sparse) file."""
        with self.model.lock:
            sparse_copy(self.model.snapshot_file(snapshot_uuid, disk_uuid), Path(dest))

    def disk_image(self, disk_uuid: str, dest: Path) -> None:
        """The live disk's content to a (sparse) file (tests compare restores with it)."""
        with self.model.lock:
            sparse_copy(self.model.store.live_path(disk_uuid), Path(dest))

    def snap_diff(self, disk_uuid: str, serial_from: int, serial_to: int) -> list[tuple[int, int]]:
        return self.model.snap_diff(disk_uuid, serial_from, serial_to)

    # --- control endpoint ----------------------------------------------------------------
    CONTROL_FAULTS = (
        "node_down",
        "node_hang",
        "node_tls_error",
        "node_502",
        "node_ok",
        "error_rate",
        "fail_next",
        "task_delay",
        "fail_tasks",
        "expire_sessions",
        "update",
        "fail_snapshot",
        "refuse_quiesce",
        "out_of_space",
        "fail_upload_after",
        "clear",
    )

    def control(self, method: str, path: str, body: Any) -> Any:
        """POST /sim/fault {"name", "args", "kwargs"}; POST /sim/write {"disk",
        "offset", "data_b64"}; GET /sim/vms."""
        if method == "POST" and path == "/sim/fault":
            name = body["name"]
            if name not in self.CONTROL_FAULTS:
                raise ValueError(f"unknown fault {name!r}")
            getattr(self.faults, name)(*body.get("args", []), **body.get("kwargs", {}))
            return {"ok": True}
        if method == "POST" and path == "/sim/write":
            data = base64.b64decode(body["data_b64"])
            self.write(body["disk"], int(body["offset"]), data)
            return {"ok": True, "written": len(data)}
        if method == "GET" and path == "/sim/vms":
            return self.vms()
        raise KeyError(f"no control call {method} {path}")
