"""`hcbak cluster probe`: prove the whole data path on a cluster with a scratch VM.

Every call a backup and a restore make, in order, on objects the probe creates and
removes itself: a scratch VM whose disk holds a known pattern (uploaded as a virtual
disk and attached: the API cannot write a disk otherwise), two snapshots, snapDiff
between them, a clone of the second onto the worker VM, the device found under the
device root, read and checked, the clone removed, the snapshots and the VM deleted,
then a restore-style qcow2 upload and its removal. Each step ends ok or failed with
the exact answer and the fix to try; the first failure stops the probe.

Nothing is left behind: every object is written to a journal
(`<state>/probe/<cluster>.json`) before the call that creates it is sent, the
cleanup runs whatever happened, and a probe killed midway is cleaned up by the next
one. `--keep` keeps the scratch VM and its snapshots when every step passed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hcbak.errors import HcbakError, NotFoundError, TransportError
from hcbak.fsio import write_atomic
from hcbak.hypercore.shapes import make_report
from hcbak.transport.device import list_devices, locate_device
from hcbak.transport.qcow2 import DEFAULT_CLUSTER_SIZE, qcow2_image

if TYPE_CHECKING:
    from hcbak.config import ClusterConfig
    from hcbak.hypercore.client import HyperCoreClient

log = logging.getLogger("hcbak.probe")

PROBE_TAG = "hcbak-probe"
DISK_SIZE = 1 << 20  # small, so the probe takes seconds even over a slow link
CHUNK = 64 * 1024

# step name -> the fix to try when it fails
FIXES = {
    "find the worker VM": "set it with `hcbak cluster add NAME ... --worker-vm VM --force`",
    "create the scratch VM": "the account needs the VM Create/Edit role (`hcbak cluster test`)",
    "write the pattern": "uploads and attach need VM Create/Edit and free space on the cluster",
    "snapshot 1": "the account needs the Backup role; check free space and the task log",
    "snapshot 2": "the account needs the Backup role; check free space and the task log",
    "snapDiff": "without snapDiff every backup reads whole disks; attach --report to an issue",
    "clone onto the worker": "the account needs Backup; the worker VM must exist and run",
    "locate the device": "run hcbak on the worker VM and set its device root "
    "(`hcbak cluster add NAME ... --device-root DIR --force`)",
    "read and check": "the device found is not the clone: check the device root",
    "remove the clone": "remove the probe's block device from the worker VM by hand",
    "delete the snapshots": "delete the snapshots labelled hcbak-probe-* by hand",
    "delete the scratch VM": "the account needs VM Delete; delete hcbak-probe-* by hand",
    "restore upload": "restores need VM Create/Edit and free space; see the task message",
    "remove the upload": "delete the virtual disk hcbak-probe-*.qcow2 by hand",
    "cleanup": "delete what the error names by hand; the next probe retries it",
}
STEPS = tuple(k for k in FIXES if k != "cleanup")


@dataclass
class Step:
    name: str
    status: str  # "ok", "failed", "not run", "skipped"
    seconds: float = 0.0
    detail: str = ""
    error: str = ""
    fix: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "seconds": round(self.seconds, 3),
            "detail": self.detail,
            "error": self.error,
            "fix": self.fix,
        }


@dataclass
class ProbeResult:
    cluster: str
    steps: list[Step] = field(default_factory=list)
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    version: str = ""

    @property
    def ok(self) -> bool:
        return all(s.status in ("ok", "skipped") for s in self.steps)

    @property
    def failed(self) -> Step | None:
        return next((s for s in self.steps if s.status == "failed"), None)

    def report(self) -> dict[str, Any]:
        """Shareable: keys and JSON types of what the cluster answered, step timings;
        no values, names or addresses."""
        out = make_report(self.records, version=self.version)
        out["steps"] = [
            {"name": s.name, "status": s.status, "seconds": round(s.seconds, 3)} for s in self.steps
        ]
        return out


def pattern(size: int) -> bytes:
    """Known, incompressible content with a zero hole in the middle (sparse reads)."""
    out = bytearray()
    block = b"hcbak-probe"
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    hole = size // 4
    out[hole : 2 * hole] = bytes(hole)
    return bytes(out[:size])


class ProbeJournal:
    """What the probe created, written before each create is sent (atomic replace)."""

    def __init__(self, state_dir: Path, cluster: str) -> None:
        self.path = Path(state_dir) / "probe" / f"{cluster}.json"
        self.data: dict[str, Any] = self._load()

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def start(self, probe_id: str) -> None:
        self.data = {"id": probe_id, "vm": "", "snapshots": [], "clone": "", "vdisks": []}
        self.save()

    def set(self, key: str, value: object) -> None:
        self.data[key] = value
        self.save()

    def add(self, key: str, value: str) -> None:
        self.data.setdefault(key, []).append(value)
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(self.data).encode("utf-8"))

    def clear(self) -> None:
        self.data = {}
        self.path.unlink(missing_ok=True)


@dataclass
class _Scratch:
    """What the probe has made so far, step by step: ids, serials, the clone's device."""

    id: str
    worker: str = ""
    vm: str = ""
    disk: str = ""
    snaps: dict[str, str] = field(default_factory=dict)  # "1", "2" -> snapshot uuid
    serials: dict[str, int] = field(default_factory=dict)  # "1", "2" -> disk serial
    before: set[str] = field(default_factory=set)  # devices before the clone
    clone: str = ""
    device: Path | None = None
    upload: str = ""


class _Stop(Exception):
    """A step failed; the steps after it do not run."""


def run_probe(
    client: HyperCoreClient,
    cluster: ClusterConfig,
    state_dir: Path,
    *,
    keep: bool = False,
    on_step: Callable[[str], None] | None = None,
    locate_timeout: float = 10.0,
) -> ProbeResult:
    """Run every step (the first failure stops them), then clean up, always."""
    from hcbak.engine.state import WorkerLock

    result = ProbeResult(cluster.name)
    journal = ProbeJournal(state_dir, cluster.name)
    if journal.data:
        leftovers = _cleanup(client, journal.data)  # a probe killed midway
        if leftovers:
            result.steps.append(Step("cleanup", "failed", error=leftovers, fix=FIXES["cleanup"]))
            return result
        journal.clear()
    probe_id = f"{PROBE_TAG}-{secrets.token_hex(4)}"
    journal.start(probe_id)
    data = pattern(DISK_SIZE)
    ctx = _Scratch(probe_id)
    pending = list(STEPS)

    def step(name: str, fn: Callable[[], str]) -> None:
        pending.remove(name)
        if on_step is not None:
            on_step(name)
        started = time.monotonic()
        try:
            detail = fn()
        except (HcbakError, OSError) as exc:
            message = exc.one_line() if isinstance(exc, HcbakError) else str(exc)
            seconds = time.monotonic() - started
            result.steps.append(Step(name, "failed", seconds, error=message, fix=FIXES[name]))
            raise _Stop from exc
        result.steps.append(Step(name, "ok", time.monotonic() - started, detail=detail))

    def skip(name: str, why: str) -> None:
        pending.remove(name)
        result.steps.append(Step(name, "skipped", detail=why))

    try:
        result.version = client.cluster_info().version
        result.records["Cluster"] = client.records("/Cluster")
        result.records["Node"] = client.records("/Node")
        step("find the worker VM", lambda: _find_worker(client, cluster, ctx))
        step("create the scratch VM", lambda: _create_vm(client, journal, ctx, result))
        step("write the pattern", lambda: _write_pattern(client, journal, ctx, data, result))
        step("snapshot 1", lambda: _snapshot(client, journal, ctx, "1", result))
        step("snapshot 2", lambda: _snapshot(client, journal, ctx, "2", result))
        step("snapDiff", lambda: _snap_diff(client, ctx))
        with WorkerLock(state_dir):  # no backup's hot-add at the same time
            step("clone onto the worker", lambda: _clone(client, cluster, journal, ctx))
            step("locate the device", lambda: _locate(cluster, ctx, locate_timeout))
            step("read and check", lambda: _read_and_check(ctx, data))
            step("remove the clone", lambda: _remove_clone(client, journal, ctx))
        if keep:
            skip("delete the snapshots", "--keep")
            skip("delete the scratch VM", "--keep")
        else:
            step("delete the snapshots", lambda: _delete_snapshots(client, journal))
            step("delete the scratch VM", lambda: _delete_vm(client, journal))
        step("restore upload", lambda: _restore_upload(client, journal, ctx, data))
        step("remove the upload", lambda: _remove_upload(client, journal, ctx))
    except _Stop:
        pass
    except HcbakError as exc:  # before the first step: version, nodes
        result.steps.append(Step("cluster", "failed", error=exc.one_line(), fix=""))
    finally:
        result.steps += [Step(name, "not run") for name in pending]
        _finish(client, journal, result, keep)
    return result


def _finish(
    client: HyperCoreClient, journal: ProbeJournal, result: ProbeResult, keep: bool
) -> None:
    """Remove what the probe made (unless kept after a pass); a leftover is a step."""
    if result.ok and keep:
        journal.clear()  # kept on purpose; the next probe must not remove them
        return
    leftovers = _cleanup(client, journal.data)
    if leftovers:
        result.steps.append(Step("cleanup", "failed", error=leftovers, fix=FIXES["cleanup"]))
    else:
        journal.clear()


# --- the steps --------------------------------------------------------------------------
def _find_worker(client: HyperCoreClient, cluster: ClusterConfig, ctx: _Scratch) -> str:
    if not cluster.worker_vm:
        raise NotFoundError(f"cluster {cluster.name} has no worker VM configured")
    worker = client.find_vm(cluster.worker_vm)
    ctx.worker = worker.uuid
    return f"{worker.name} ({worker.state})"


def _create_vm(
    client: HyperCoreClient, journal: ProbeJournal, ctx: _Scratch, result: ProbeResult
) -> str:
    journal.set("vm_name", ctx.id)  # found by name if the answer is lost
    dom = {
        "name": ctx.id,
        "description": "hcbak cluster probe: scratch VM, safe to delete",
        "tags": PROBE_TAG,
        "mem": 256 << 20,
        "numVCPU": 1,  # machineType left to the cluster: its names differ by version
        "netDevs": [],
    }
    ctx.vm = client.create_vm(dom)
    journal.set("vm", ctx.vm)
    return ctx.vm


def _write_pattern(
    client: HyperCoreClient,
    journal: ProbeJournal,
    ctx: _Scratch,
    data: bytes,
    result: ProbeResult,
) -> str:
    name = f"{ctx.id}.img"
    journal.add("vdisk_names", name)
    chunks = (data[i : i + CHUNK] for i in range(0, len(data), CHUNK))
    vd = client.upload_virtual_disk(name, len(data), chunks)
    journal.add("vdisks", vd)
    result.records["VirtualDisk"] = client.records(f"/VirtualDisk/{vd}")
    ctx.disk = client.attach_virtual_disk(vd, ctx.vm, "VIRTIO_DISK", len(data), 0)
    client.delete_virtual_disk(vd)
    journal.data["vdisks"].remove(vd)
    journal.save()
    result.records["VirDomain"] = client.records(f"/VirDomain/{ctx.vm}")
    result.records["VirDomainBlockDevice"] = client.records(f"/VirDomainBlockDevice/{ctx.disk}")
    return f"{len(data)} bytes on block device {ctx.disk}"


def _snapshot(
    client: HyperCoreClient,
    journal: ProbeJournal,
    ctx: _Scratch,
    which: str,
    result: ProbeResult,
) -> str:
    label = f"{ctx.id}-{which}"
    journal.add("snapshot_labels", label)
    tags: list[str] = []
    snap = client.create_snapshot(ctx.vm, label, accepted=tags.append)
    journal.add("snapshots", snap.uuid)
    serial = snap.serial_for(ctx.disk)
    if serial is None:
        raise TransportError(f"snapshot {label} does not hold the scratch disk")
    ctx.snaps[which], ctx.serials[which] = snap.uuid, serial
    result.records.setdefault("VirDomainSnapshot", []).extend(
        client.records(f"/VirDomainSnapshot/{snap.uuid}")
    )
    if tags:
        result.records.setdefault("TaskTag", []).extend(client.records(f"/TaskTag/{tags[0]}"))
    device = snap.device(ctx.disk)
    return f"serial {serial} (from the {device.serial_source if device else 'none'} record)"


def _snap_diff(client: HyperCoreClient, ctx: _Scratch) -> str:
    a, b = ctx.serials["1"], ctx.serials["2"]
    intervals = client.snap_diff(ctx.disk, a, b)
    return f"{len(intervals)} changed interval(s) between serials {a} and {b}"


def _clone(
    client: HyperCoreClient, cluster: ClusterConfig, journal: ProbeJournal, ctx: _Scratch
) -> str:
    ctx.before = list_devices(Path(cluster.device_root))

    def accepted(clone: str, tag: str) -> None:
        journal.set("clone", clone)

    ctx.clone = client.clone_snapshot_disk(
        ctx.disk, ctx.snaps["2"], ctx.worker, DISK_SIZE, accepted=accepted
    )
    journal.set("clone", ctx.clone)
    return ctx.clone


def _locate(cluster: ClusterConfig, ctx: _Scratch, timeout: float) -> str:
    ctx.device = locate_device(
        cluster.device_root, ctx.clone, DISK_SIZE, before=ctx.before, timeout=timeout
    )
    return str(ctx.device)


def _read_and_check(ctx: _Scratch, data: bytes) -> str:
    assert ctx.device is not None  # the step before found it
    with open(ctx.device, "rb") as f:
        got = f.read(len(data))
    if got != data:
        first = next(
            (i for i, (a, b) in enumerate(zip(got, data, strict=False)) if a != b), len(got)
        )
        raise TransportError(
            f"{ctx.device} does not hold the pattern: first difference at byte {first} "
            f"of {len(data)} (read {len(got)} bytes)"
        )
    return f"{len(data)} bytes match (sha256 {hashlib.sha256(data).hexdigest()[:16]})"


def _remove_clone(client: HyperCoreClient, journal: ProbeJournal, ctx: _Scratch) -> str:
    client.delete_block_device(ctx.clone)
    journal.set("clone", "")
    return ctx.clone


def _delete_snapshots(client: HyperCoreClient, journal: ProbeJournal) -> str:
    snaps = list(journal.data.get("snapshots", []))
    for uuid in snaps:
        client.delete_snapshot(uuid)
        journal.data["snapshots"].remove(uuid)
        journal.save()
    journal.set("snapshot_labels", [])
    return f"{len(snaps)} snapshot(s)"


def _delete_vm(client: HyperCoreClient, journal: ProbeJournal) -> str:
    vm = journal.data.get("vm", "")
    client.delete_vm(vm)
    journal.set("vm", "")
    journal.set("vm_name", "")
    return str(vm)


def _restore_upload(
    client: HyperCoreClient, journal: ProbeJournal, ctx: _Scratch, data: bytes
) -> str:
    name = f"{ctx.id}.qcow2"
    journal.add("vdisk_names", name)
    per = DEFAULT_CLUSTER_SIZE
    clusters = [i for i in range(len(data) // per) if any(data[i * per : (i + 1) * per])]
    size, chunks = qcow2_image(len(data), clusters, lambda i: data[i * per : (i + 1) * per])
    ctx.upload = client.upload_virtual_disk(name, size, chunks)
    journal.add("vdisks", ctx.upload)
    vd = client.get_virtual_disk(ctx.upload)
    if vd.capacity != len(data):
        raise TransportError(f"the uploaded qcow2 became {vd.capacity} bytes, not {len(data)}")
    return f"{size} bytes of qcow2 -> {vd.capacity} bytes"


def _remove_upload(client: HyperCoreClient, journal: ProbeJournal, ctx: _Scratch) -> str:
    client.delete_virtual_disk(ctx.upload)
    journal.data["vdisks"].remove(ctx.upload)
    journal.set("vdisk_names", [])
    return ctx.upload


# --- cleanup ------------------------------------------------------------------------------
def _cleanup(client: HyperCoreClient, data: dict[str, Any]) -> str:
    """Remove everything the journal names (clone first, the VM last); '' when done,
    else what is left and why. Objects whose create answer was lost are found by the
    names and labels written before the call."""
    problems: list[str] = []

    def attempt(what: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except HcbakError as exc:
            problems.append(f"{what}: {exc.one_line()}")

    vm_uuid = data.get("vm") or ""
    name = data.get("vm_name") or ""
    if not vm_uuid and name:
        try:
            vm_uuid = client.find_vm(name).uuid
        except NotFoundError:
            pass
        except HcbakError as exc:
            problems.append(f"VM {name}: {exc.one_line()}")
    if data.get("clone"):
        attempt(f"clone {data['clone']}", lambda: client.delete_block_device(data["clone"]))
    snaps = set(data.get("snapshots") or [])
    labels = set(data.get("snapshot_labels") or [])
    if vm_uuid and labels:
        try:
            snaps |= {s.uuid for s in client.list_snapshots(vm_uuid) if s.label in labels}
        except HcbakError as exc:
            problems.append(f"snapshots of {vm_uuid}: {exc.one_line()}")
    for uuid in sorted(snaps):
        attempt(f"snapshot {uuid}", functools.partial(client.delete_snapshot, uuid))
    if vm_uuid:
        attempt(f"VM {vm_uuid}", lambda: client.delete_vm(vm_uuid))
    vdisks = set(data.get("vdisks") or [])
    names = set(data.get("vdisk_names") or [])
    if names:
        try:
            vdisks |= {
                v.uuid
                for v in client.list_virtual_disks()
                if v.name in names or v.name.split("-", 1)[-1] in names
            }
        except HcbakError as exc:
            problems.append(f"virtual disks: {exc.one_line()}")
    for uuid in sorted(vdisks):
        attempt(f"virtual disk {uuid}", functools.partial(client.delete_virtual_disk, uuid))
    return "; ".join(problems)
