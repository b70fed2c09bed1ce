"""Restore: a point's disks to files or streams, or the whole VM back onto a cluster.

Every point is a synthetic full (a complete block map per disk), so a restore reads one
point only. Blocks are fetched through `Repository.get_block` (read, decrypt, decompress,
verify) by a small thread pool with a bounded in-order window: the heavy parts release
the GIL, and memory stays at `window * block_size` whatever the disk size.

The caller holds the repository's shared lock for the whole restore, so a prune (which
needs the exclusive lock) cannot remove blocks of the point half-way.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import threading
import time
from array import array
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from hcbak.errors import (
    HcbakError,
    NotFoundError,
    TransportError,
    UsageError,
)
from hcbak.repo.fsio import pwrite_all
from hcbak.repo.locks import pid_alive
from hcbak.transport.qcow2 import Qcow2Layout, choose_cluster_size, plan_qcow2, stream_qcow2

if TYPE_CHECKING:
    from hcbak.hypercore import HyperCoreClient
    from hcbak.repo import DiskImage, Point, Repository

FORMATS = ("raw", "qcow2", "vmdk", "vhdx")
FETCH_WORKERS = 4
FETCH_WINDOW = 8  # blocks in flight per disk: bounds memory to ~8 MiB at 1 MiB blocks
SHUTDOWN_TIMEOUT = 300.0  # seconds an ACPI shutdown may take before a hard stop
OFF_STATES = frozenset({"SHUTOFF", "SHUTDOWN", "STOPPED"})

# (disk label, bytes done, bytes total); called from the restoring thread only.
Progress = Callable[[str, int, int], None]


def _no_progress(label: str, done: int, total: int) -> None:
    return None


@dataclass
class DiskResult:
    """What one disk restore did (for the summary and --json)."""

    uuid: str
    slot: int
    type: str
    capacity: int
    format: str
    destination: str
    bytes_written: int  # bytes of data written or sent (zero blocks excluded)
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class VmResult:
    """What a whole-VM restore did."""

    point_id: str
    vm_uuid: str
    vm_name: str
    powered_on: bool
    replaced_uuid: str | None = None
    replaced_name: str | None = None
    disks: list[DiskResult] = field(default_factory=list)
    # Disks of the saved definition that the point holds no data for (CD-ROMs, disks
    # excluded by the job or with snapshots disabled): not recreated, reported.
    not_restored: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The --json shape: the VM is `vm` (its name) and `vm_uuid`, as everywhere."""
        out = dict(self.__dict__)
        out["vm"] = out.pop("vm_name")
        out["disks"] = [d.to_dict() for d in self.disks]
        return out


# --- disks ----------------------------------------------------------------------------


def select_disk(point: Point, selector: str) -> DiskImage:
    """The disk of `point` named by slot number, uuid or unique uuid prefix."""
    disks = list(point.disks)
    if selector.lstrip("-").isdigit():
        matches = [d for d in disks if d.slot == int(selector)]
    else:
        matches = [d for d in disks if d.uuid == selector] or [
            d for d in disks if d.uuid.startswith(selector)
        ]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(f"slot {d.slot} ({d.type}, {d.uuid})" for d in disks) or "none"
    if not matches:
        raise NotFoundError(f"point {point.id} has no disk {selector!r}", hint=f"disks: {known}")
    raise UsageError(f"disk {selector!r} is ambiguous in point {point.id}", hint=f"disks: {known}")


def restore_disk(
    repo: Repository,
    point: Point,
    disk_selector: str,
    dest: Path | BinaryIO,
    fmt: str = "raw",
    progress: Progress | None = None,
) -> DiskResult:
    """Write one disk of `point` to `dest` (a path, or a binary stream for raw output).

    raw files are sparse (zero blocks are holes); qcow2 comes from hcbak's writer;
    vmdk/vhdx go through `qemu-img convert` from a sparse raw temp file next to `dest`.
    A new file that fails half-way is removed.
    """
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}", hint="use raw, qcow2, vmdk or vhdx")
    disk = select_disk(point, disk_selector)
    report = progress or _no_progress
    started = time.monotonic()
    if not isinstance(dest, Path):
        if fmt != "raw":
            raise UsageError("only raw can be streamed to stdout", hint="use --format raw")
        written = _write_raw_stream(repo, disk, dest, report)
        where = "-"
    else:
        written = _write_file(repo, disk, dest, fmt, report)
        where = str(dest)
    return DiskResult(
        uuid=disk.uuid,
        slot=disk.slot,
        type=disk.type,
        capacity=disk.capacity,
        format=fmt,
        destination=where,
        bytes_written=written,
        seconds=time.monotonic() - started,
    )


def check_destination(dest: Path) -> bool:
    """Whether `dest` is a block device (written in place); else it must be a new file
    in a folder we can write to. Checked before the repository opens, so a typo in
    --to costs no scrypt and no read."""
    try:
        if stat.S_ISBLK(dest.stat().st_mode):
            return True
        raise UsageError(f"{dest} already exists", hint="remove it or choose another path")
    except (FileNotFoundError, NotADirectoryError):
        pass
    folder = dest.parent
    if not folder.is_dir():
        raise UsageError(f"folder {folder} does not exist", hint="create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write to folder {folder}: permission denied")
    return False


def _write_file(repo: Repository, disk: DiskImage, dest: Path, fmt: str, report: Progress) -> int:
    if check_destination(dest):  # a device is written in place; it cannot be renamed into
        return _write_raw_file(repo, disk, dest, report, is_device=True)
    _remove_dead_partials(dest)
    # Everything is written under a name that says "partial" and only linked to `dest`
    # once complete: a killed restore never leaves a file that looks whole. No fsync (as
    # cp, dd and restic): the page cache survives a killed process, and a restore cut by
    # power loss is rerun; `sync` after it when the image must be on disk at once.
    partial = dest.with_name(f".{dest.name}.hcbak-partial-{os.getpid()}")
    try:
        if fmt in ("vmdk", "vhdx"):
            written = _write_converted(repo, disk, partial, fmt, report)
        elif fmt == "qcow2":
            with open(partial, "xb") as out:
                written = _write_qcow2(repo, disk, out, report)
        else:
            written = _write_raw_file(repo, disk, partial, report, is_device=False)
        try:
            os.link(partial, dest)  # fails rather than replace a file created meanwhile
        except FileExistsError:
            raise UsageError(f"{dest} already exists", hint="remove it or choose another path")
        return written
    except OSError as exc:
        if exc.filename not in (None, str(partial)):
            raise
        # Name the file the operator asked for, not our temp name or nothing (pwrite).
        raise OSError(exc.errno, exc.strerror, str(dest)) from exc
    finally:
        partial.unlink(missing_ok=True)


def _remove_dead_partials(dest: Path) -> None:
    """Partial files of earlier restores to `dest` whose process is gone (kill -9)."""
    prefix = f".{dest.name}.hcbak-partial-"
    for leftover in dest.parent.glob(prefix + "*"):
        pid = leftover.name[len(prefix) :].split(".")[0]  # "<pid>" or "<pid>.raw"
        if pid.isdigit() and not pid_alive(int(pid)):
            leftover.unlink(missing_ok=True)


def _write_raw_file(
    repo: Repository, disk: DiskImage, dest: Path, report: Progress, is_device: bool
) -> int:
    """Sparse raw: pwrite the stored blocks, leave holes for zero blocks, then size it.

    A block device cannot have holes and may hold old data, so zero blocks are written
    there explicitly.
    """
    flags = os.O_WRONLY | (0 if is_device else os.O_CREAT | os.O_EXCL)
    fd = os.open(dest, flags, 0o600)
    try:
        if not is_device:
            os.ftruncate(fd, disk.capacity)
        indexes = range(len(disk.block_map)) if is_device else _stored_blocks(disk)
        written = 0
        for index, data in fetch_blocks(repo, disk, indexes):
            offset = index * disk.block_size
            chunk = _clip(data, disk.capacity - offset)
            pwrite_all(fd, chunk, offset)
            written += len(chunk) if data is not _zero_block(disk.block_size) else 0
            report(_label(disk), min(disk.capacity, offset + disk.block_size), disk.capacity)
        report(_label(disk), disk.capacity, disk.capacity)
        return written
    finally:
        os.close(fd)


def _write_raw_stream(repo: Repository, disk: DiskImage, out: BinaryIO, report: Progress) -> int:
    """Raw bytes to a stream in order (stdout): zero blocks are written as zeros."""
    written = 0
    for index, data in fetch_blocks(repo, disk, range(len(disk.block_map))):
        offset = index * disk.block_size
        chunk = _clip(data, disk.capacity - offset)
        out.write(chunk)
        written += len(chunk) if data is not _zero_block(disk.block_size) else 0
        report(_label(disk), min(disk.capacity, offset + disk.block_size), disk.capacity)
    out.flush()
    return written


def _write_qcow2(repo: Repository, disk: DiskImage, out: BinaryIO, report: Progress) -> int:
    layout, chunks = qcow2_stream(repo, disk, report)
    sent = 0
    for chunk in chunks:
        out.write(chunk)
        sent += len(chunk)
    if sent != layout.total_size:  # the writer guarantees it; a mismatch is a bug
        raise TransportError(f"qcow2 length {sent} differs from planned {layout.total_size}")
    return layout.data_clusters * layout.cluster_size


def _write_converted(
    repo: Repository, disk: DiskImage, dest: Path, fmt: str, report: Progress
) -> int:
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        raise UsageError(
            f"--format {fmt} needs qemu-img, which is not installed",
            hint="install qemu-utils (Debian/Ubuntu) or qemu-img (RHEL), or use raw/qcow2",
        )
    temp = dest.with_name(f"{dest.name}.raw")
    try:
        written = _write_raw_file(repo, disk, temp, report, is_device=False)
        proc = subprocess.run(
            [qemu_img, "convert", "-f", "raw", "-O", fmt, str(temp), str(dest)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            dest.unlink(missing_ok=True)
            detail = " ".join(proc.stderr.split())[:300]
            raise TransportError(f"qemu-img convert to {fmt} failed: {detail}")
        return written
    finally:
        temp.unlink(missing_ok=True)


def qcow2_stream(
    repo: Repository, disk: DiskImage, progress: Progress | None = None
) -> tuple[Qcow2Layout, Iterator[bytes]]:
    """The qcow2 image of a disk: its layout (exact `total_size`) and its chunks.

    The cluster size follows the block size (transport.qcow2.choose_cluster_size), so a
    block is one cluster, or splits into whole 2 MiB clusters for blocks above 2 MiB.
    """
    block_size = disk.block_size
    cluster_size = choose_cluster_size(block_size)
    if block_size % cluster_size:
        raise TransportError(
            f"qcow2 needs a power-of-two block size of at least 64 KiB, got {block_size}"
        )
    per_block = block_size // cluster_size
    guest_clusters = -(-disk.capacity // cluster_size)
    stored = _stored_blocks(disk)
    clusters = array("q")
    for index in stored:
        first = index * per_block
        clusters.extend(range(first, min(first + per_block, guest_clusters)))
    layout = plan_qcow2(disk.capacity, clusters, cluster_size)
    report = progress or _no_progress

    def data() -> Iterator[bytes]:
        for index, block in fetch_blocks(repo, disk, stored):
            if per_block == 1:
                yield block  # the common case: no copy
            else:
                view = memoryview(block)
                for part in range(per_block):
                    if index * per_block + part < guest_clusters:
                        yield bytes(view[part * cluster_size : (part + 1) * cluster_size])
            report(_label(disk), min(disk.capacity, (index + 1) * block_size), disk.capacity)
        report(_label(disk), disk.capacity, disk.capacity)

    return layout, stream_qcow2(layout, data())


# --- block fetching -------------------------------------------------------------------


def fetch_blocks(
    repo: Repository,
    disk: DiskImage,
    indexes: Iterable[int],
    workers: int = FETCH_WORKERS,
    window: int = FETCH_WINDOW,
) -> Iterator[tuple[int, bytes]]:
    """(index, plaintext) for each block index, in order, fetched in parallel.

    At most `window` blocks are in flight or buffered. Zero blocks are not fetched: they
    come back as one shared zero buffer (identity-comparable via `_zero_block`).
    """
    from hcbak.repo import ZERO_BLOCK

    zero = _zero_block(disk.block_size)
    pending: deque[tuple[int, Future[bytes] | None]] = deque()
    source = iter(indexes)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hcbak-restore")

    def submit_next() -> None:
        for index in source:
            block_id = disk.block_map.get(index)
            if block_id == ZERO_BLOCK:
                pending.append((index, None))
                continue
            pending.append((index, pool.submit(repo.get_block, block_id)))
            return

    try:
        for _ in range(window):
            submit_next()
        while pending:
            index, future = pending.popleft()
            data = zero if future is None else future.result()
            submit_next()
            yield index, data
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _clip(data: bytes, room: int) -> bytes | memoryview:
    """The part of a block inside the disk (the last block may pass its end); no copy."""
    return data if len(data) <= room else memoryview(data)[:room]


_ZEROS: dict[int, bytes] = {}


def _zero_block(size: int) -> bytes:
    if size not in _ZEROS:
        _ZEROS[size] = bytes(size)
    return _ZEROS[size]


def _stored_blocks(disk: DiskImage) -> array[int]:
    """Indexes of the blocks that hold data (not ZERO_BLOCK), ascending."""
    from hcbak.repo import ZERO_BLOCK

    bmap = disk.block_map
    return array("q", (i for i in range(len(bmap)) if bmap.get(i) != ZERO_BLOCK))


def _label(disk: DiskImage) -> str:
    return f"slot {disk.slot} {disk.type}"


class DiskReader:
    """Random-access reads of one disk of a point, for `hcbak mount`.

    Keeps the last few decoded blocks (sequential reads by `cp`/`losetup` hit the same
    block many times in 128 KiB pieces). Thread safe: FUSE calls from several threads.
    """

    def __init__(self, repo: Repository, disk: DiskImage, cache_blocks: int = 16) -> None:
        self.repo = repo
        self.disk = disk
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cache_blocks = cache_blocks
        self._lock = threading.Lock()

    def read(self, offset: int, size: int) -> bytes:
        """Up to `size` bytes at `offset`; short only at the end of the disk."""
        end = min(self.disk.capacity, offset + size)
        out = bytearray()
        bs = self.disk.block_size
        while offset < end:
            index, within = divmod(offset, bs)
            take = min(bs - within, end - offset)
            out += self._block(index)[within : within + take]
            offset += take
        return bytes(out)

    def _block(self, index: int) -> bytes:
        from hcbak.repo import ZERO_BLOCK

        block_id = self.disk.block_map.get(index)
        if block_id == ZERO_BLOCK:
            return _zero_block(self.disk.block_size)
        with self._lock:
            if index in self._cache:
                self._cache.move_to_end(index)
                return self._cache[index]
        data = self.repo.get_block(block_id)
        with self._lock:
            self._cache[index] = data
            while len(self._cache) > self._cache_blocks:
                self._cache.popitem(last=False)
        return data


# --- whole VM -------------------------------------------------------------------------


@dataclass
class VmOptions:
    """How to restore a VM (the CLI's options)."""

    name: str | None = None  # --as; default: the point's VM name
    power_on: bool = False
    network_map: dict[int, int] = field(default_factory=dict)  # old VLAN -> new VLAN
    keep_macs: bool = False
    replace: bool = False
    shutdown_timeout: float = SHUTDOWN_TIMEOUT


def restore_vm(
    repo: Repository,
    point: Point,
    client: HyperCoreClient,
    options: VmOptions,
    progress: Progress | None = None,
) -> VmResult:
    """Create a VM from `point` and stream its disks into it.

    Without --replace the VM gets the target name at once and an existing VM of that name
    is an error. With --replace the VM is built under a temporary name while the original
    keeps running; only when every disk is in place is the original shut down (ACPI, then
    a hard stop after `shutdown_timeout`), renamed `<name>-replaced-<timestamp>`, and the
    new VM renamed to the original name: the downtime is two renames, and a failure
    during the long part leaves the original untouched. Nothing is deleted except what
    this restore created, and that is removed on any failure.
    """
    started = time.monotonic()
    target = options.name or point.vm_name
    original = _find_original(client, target, options.replace)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    build_name = f"{target}-restoring-{stamp}" if original else target
    undo = _Undo(client)
    try:
        vm_uuid = client.create_vm(vm_definition(point.vm, build_name, options))
        undo.vm_uuid = vm_uuid
        disks, new_devices = _upload_disks(repo, point, client, vm_uuid, undo, progress)
        boot = _boot_order(client, point.vm, vm_uuid, new_devices)
        result = VmResult(point.id, vm_uuid, target, powered_on=False, disks=disks)
        result.not_restored = _not_in_point(point)
        if original is None:
            if boot:
                client.update_vm(vm_uuid, {"bootDevices": boot})
        else:
            result.replaced_uuid = original.uuid
            result.replaced_name = f"{target}-replaced-{stamp}"
            undo.original = (original.uuid, target, original.state)
            _shut_down(client, original.uuid, options.shutdown_timeout)
            client.update_vm(original.uuid, {"name": result.replaced_name})
            # One PATCH (one task) takes the name and the boot order.
            client.update_vm(vm_uuid, {"name": target, **({"bootDevices": boot} if boot else {})})
        if options.power_on:
            client.vm_action(vm_uuid, "START")
            result.powered_on = True
    except BaseException as exc:
        undo.run()
        if isinstance(exc, HcbakError) and undo.errors:
            exc.hint = "; ".join(filter(None, [exc.hint, *undo.errors]))
        raise
    result.seconds = time.monotonic() - started
    return result


def vm_definition(vm: dict[str, Any], name: str, options: VmOptions) -> dict[str, Any]:
    """The `dom` body of `POST /VirDomain` from a point's saved VM definition.

    Disks are not created here: they arrive by upload + attach, which keeps their
    contents. NICs get new MACs unless --keep-macs (two VMs with one MAC on a VLAN
    break each other); VLANs go through --network-map.
    """
    tags = vm.get("tags", "")
    nics = []
    for nic in vm.get("netDevs") or []:
        vlan = int(nic.get("vlan", 0) or 0)
        new: dict[str, Any] = {
            "type": nic.get("type", "VIRTIO"),
            "vlan": options.network_map.get(vlan, vlan),
            "connected": bool(nic.get("connected", True)),
        }
        if options.keep_macs and nic.get("macAddress"):
            new["macAddress"] = nic["macAddress"]
        nics.append(new)
    return {
        "name": name,
        "description": vm.get("description", ""),
        "tags": tags if isinstance(tags, str) else ",".join(tags),
        "mem": int(vm.get("mem", 0)),
        "numVCPU": int(vm.get("numVCPU", 1)),
        "machineType": vm.get("machineType", ""),
        "blockDevs": [],
        "netDevs": nics,
    }


def _find_original(client: HyperCoreClient, name: str, replace: bool) -> Any:
    try:
        existing = client.find_vm(name)
    except NotFoundError:
        existing = None
    if existing is not None and not replace:
        raise UsageError(
            f"a VM named {name!r} already exists on the cluster",
            hint="restore under another name with --as NAME, or use --replace",
        )
    if existing is None and replace:
        raise NotFoundError(f"--replace: no VM named {name!r} on the cluster")
    return existing


def _upload_disks(
    repo: Repository,
    point: Point,
    client: HyperCoreClient,
    vm_uuid: str,
    undo: _Undo,
    progress: Progress | None,
) -> tuple[list[DiskResult], dict[str, str]]:
    """Upload each disk as qcow2 and attach it in its slot; returns old->new device uuids."""
    results: list[DiskResult] = []
    new_devices: dict[str, str] = {}
    for disk in sorted(point.disks, key=lambda d: (d.slot < 0, d.slot)):
        started = time.monotonic()
        layout, chunks = qcow2_stream(repo, disk, progress)
        name = f"hcbak-{point.id[:12]}-{disk.uuid[:8]}.qcow2"
        vd_uuid = client.upload_virtual_disk(name, layout.total_size, chunks)
        undo.virtual_disks.append(vd_uuid)
        # regenerateDiskID must be false or GRUB/BCD disk ids change and the VM won't boot;
        # NVRAM/VTPM (slot -1) go back the same way.
        device = client.attach_virtual_disk(vd_uuid, vm_uuid, disk.type, disk.capacity, disk.slot)
        new_devices[disk.uuid] = device
        client.delete_virtual_disk(vd_uuid)
        undo.virtual_disks.remove(vd_uuid)
        results.append(
            DiskResult(
                uuid=device,
                slot=disk.slot,
                type=disk.type,
                capacity=disk.capacity,
                format="qcow2",
                destination=f"vm:{vm_uuid}",
                bytes_written=layout.total_size,
                seconds=time.monotonic() - started,
            )
        )
    return results, new_devices


def _not_in_point(point: Point) -> list[str]:
    stored = {d.uuid for d in point.disks}
    return [
        f"slot {d.get('slot')} {d.get('type')} {d.get('uuid')}"
        for d in point.vm.get("blockDevs") or []
        if d.get("uuid") not in stored
    ]


def _boot_order(
    client: HyperCoreClient, vm: dict[str, Any], vm_uuid: str, new_devices: dict[str, str]
) -> list[str]:
    """The saved boot order (disk and NIC uuids) mapped onto the new VM's devices."""
    old_order = list(vm.get("bootDevices") or [])
    if not old_order:
        return []
    mapping = dict(new_devices)
    old_nics = [n.get("uuid") for n in vm.get("netDevs") or []]
    if any(u in old_order for u in old_nics):
        new_nics = [n.uuid for n in client.get_vm(vm_uuid).nics]
        mapping.update({o: n for o, n in zip(old_nics, new_nics, strict=False) if o})
    return [mapping[u] for u in old_order if u in mapping]


def _shut_down(client: HyperCoreClient, vm_uuid: str, timeout: float) -> None:
    """ACPI shutdown, then a hard stop when the guest ignores it within `timeout`."""
    if client.get_vm(vm_uuid).state in OFF_STATES:
        return
    client.vm_action(vm_uuid, "SHUTDOWN")
    if _wait_off(client, vm_uuid, timeout):
        return
    client.vm_action(vm_uuid, "STOP")
    if not _wait_off(client, vm_uuid, max(30.0, timeout / 4)):
        raise TransportError(f"VM {vm_uuid} did not power off after SHUTDOWN and STOP")


def _wait_off(client: HyperCoreClient, vm_uuid: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        if client.get_vm(vm_uuid).state in OFF_STATES:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 2.0)


@dataclass
class _Undo:
    """What a failed restore must take back, in reverse order of creation."""

    client: HyperCoreClient
    vm_uuid: str | None = None
    virtual_disks: list[str] = field(default_factory=list)
    original: tuple[str, str, str] | None = None  # (uuid, name, state before)
    errors: list[str] = field(default_factory=list)

    def run(self) -> None:
        for vd in list(self.virtual_disks):
            self._try(f"delete uploaded disk {vd}", self.client.delete_virtual_disk, vd)
        if self.vm_uuid:
            self._try(f"delete new VM {self.vm_uuid}", self._delete_vm, self.vm_uuid)
        if self.original:
            uuid, name, state = self.original
            self._try(f"rename {uuid} back to {name}", self.client.update_vm, uuid, {"name": name})
            if state == "RUNNING":
                self._try(f"start {name} again", self.client.vm_action, uuid, "START")

    def _delete_vm(self, vm_uuid: str) -> None:
        state = self.client.get_vm(vm_uuid).state
        if state not in OFF_STATES:
            self.client.vm_action(vm_uuid, "STOP")
            _wait_off(self.client, vm_uuid, 60.0)
        self.client.delete_vm(vm_uuid)

    def _try(self, what: str, func: Callable[..., Any], *args: Any) -> None:
        try:
            func(*args)
        except Exception as exc:  # keep undoing the rest; report what stayed behind
            self.errors.append(f"cleanup could not {what}: {exc}")
