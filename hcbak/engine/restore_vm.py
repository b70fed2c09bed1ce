"""Restore a whole VM from a point onto a cluster (`restore vm`).

The VM is created from the point's saved definition, each disk is uploaded as a qcow2
stream (point_reader.py) and attached in its slot, then the boot order is mapped onto
the new devices. With --replace the original keeps running until every disk is in
place (restore_vm's docstring). Anything this restore created is removed on failure.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from hcbak.engine.point_reader import Progress, qcow2_stream
from hcbak.engine.restore_disk import DiskResult
from hcbak.errors import HcbakError, NotFoundError, TransportError, UsageError

if TYPE_CHECKING:
    from hcbak.hypercore import HyperCoreClient
    from hcbak.hypercore.records import VM
    from hcbak.repo import Point, Repository

SHUTDOWN_TIMEOUT = 300.0  # seconds an ACPI shutdown may take before a hard stop


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


def _find_original(client: HyperCoreClient, name: str, replace: bool) -> VM | None:
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
    if client.get_vm(vm_uuid).is_off:
        return
    client.vm_action(vm_uuid, "SHUTDOWN")
    if client.wait_powered_off(vm_uuid, timeout):
        return
    client.vm_action(vm_uuid, "STOP")
    if not client.wait_powered_off(vm_uuid, max(30.0, timeout / 4)):
        raise TransportError(f"VM {vm_uuid} did not power off after SHUTDOWN and STOP")


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
        if not self.client.get_vm(vm_uuid).is_off:
            self.client.vm_action(vm_uuid, "STOP")
            self.client.wait_powered_off(vm_uuid, 60.0)
        self.client.delete_vm(vm_uuid)

    def _try(self, what: str, func: Callable[..., object], *args: object) -> None:
        try:
            func(*args)
        except Exception as exc:  # keep undoing the rest; report what stayed behind
            self.errors.append(f"cleanup could not {what}: {exc}")
