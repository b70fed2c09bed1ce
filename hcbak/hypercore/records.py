"""Typed records of the HyperCore API, each built from an API dict in one place.

Every `from_api` is tolerant: a missing or null field becomes a neutral default rather
than a KeyError, because field sets differ between HyperCore builds (9.6 vs 9.7, and the
Ansible collection's tests show records with only some keys). Shapes follow
../shared/hypercore-api.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Disk types whose bytes a backup reads; CD-ROM and floppy images are not VM state.
DATA_DISK_TYPES = frozenset({"VIRTIO_DISK", "SCSI_DISK", "IDE_DISK"})
STATE_DISK_TYPES = frozenset({"NVRAM", "VTPM"})


def _str(d: dict[str, Any], key: str, default: str = "") -> str:
    value = d.get(key)
    return default if value is None else str(value)


def _int(d: dict[str, Any], key: str, default: int = 0) -> int:
    value = d.get(key)
    try:
        return int(value) if value is not None and value != "" else default
    except (TypeError, ValueError):
        return default


def _opt_int(value: Any) -> int | None:
    try:
        return int(value) if value is not None and value != "" else None
    except (TypeError, ValueError):
        return None


def _bool(d: dict[str, Any], key: str, default: bool = False) -> bool:
    value = d.get(key)
    return default if value is None else bool(value)


def _list(d: dict[str, Any], key: str) -> list[Any]:
    value = d.get(key)
    return list(value) if isinstance(value, list) else []


def split_tags(value: Any) -> list[str]:
    """VM `tags` is one comma-separated string in the API; lists are accepted too."""
    if isinstance(value, list):
        items = [str(v) for v in value]
    elif isinstance(value, str):
        items = value.split(",")
    else:
        return []
    return [t.strip() for t in items if t.strip()]


@dataclass(frozen=True)
class ClusterInfo:
    """GET /Cluster: the version is pinned per run."""

    uuid: str
    name: str
    version: str

    @classmethod
    def from_api(cls, d: dict[str, Any]) -> ClusterInfo:
        # icosVersion is the version of the node that answered (it can differ mid-update).
        return cls(_str(d, "uuid"), _str(d, "clusterName"), _str(d, "icosVersion"))


@dataclass(frozen=True)
class Node:
    """A cluster node from GET /Node (failover learns its peers from it)."""

    uuid: str
    lan_ip: str

    @classmethod
    def from_api(cls, d: dict[str, Any]) -> Node:
        return cls(_str(d, "uuid"), _str(d, "lanIP"))


@dataclass(frozen=True)
class Disk:
    """A VM block device as GET /VirDomain embeds it."""

    uuid: str
    type: str
    capacity: int
    slot: int
    cache_mode: str
    name: str
    path: str
    disable_snapshotting: bool

    @classmethod
    def from_api(cls, d: dict[str, Any]) -> Disk:
        return cls(
            uuid=_str(d, "uuid"),
            type=_str(d, "type"),
            capacity=_int(d, "capacity"),
            slot=_int(d, "slot", -1),
            cache_mode=_str(d, "cacheMode"),
            name=_str(d, "name"),
            path=_str(d, "path"),
            disable_snapshotting=_bool(d, "disableSnapshotting"),
        )

    @property
    def is_data_disk(self) -> bool:
        return self.type in DATA_DISK_TYPES


@dataclass(frozen=True)
class NetDev:
    """A VM NIC as GET /VirDomain embeds it (restore recreates it)."""

    uuid: str
    type: str
    vlan: int
    mac: str
    connected: bool

    @classmethod
    def from_api(cls, d: dict[str, Any]) -> NetDev:
        return cls(
            uuid=_str(d, "uuid"),
            type=_str(d, "type"),
            vlan=_int(d, "vlan"),
            mac=_str(d, "macAddress"),
            connected=_bool(d, "connected", True),
        )


VM_OFF_STATES = frozenset({"SHUTOFF", "SHUTDOWN", "STOPPED"})


@dataclass(frozen=True)
class VM:
    """A VM from GET /VirDomain, with what a backup records and a restore recreates."""

    uuid: str
    name: str
    description: str
    tags: list[str]
    mem: int
    vcpus: int
    machine_type: str
    state: str
    disks: list[Disk]
    nics: list[NetDev]
    boot_devices: list[str]
    snap_uuids: list[str]
    source_vm_uuid: str
    raw: dict[str, Any] = field(repr=False, compare=False)
    # "AVAILABLE" when the guest agent answers (quiesce needs it); "" when not reported.
    guest_agent_state: str = ""

    @classmethod
    def from_api(cls, d: dict[str, Any]) -> VM:
        return cls(
            uuid=_str(d, "uuid"),
            name=_str(d, "name"),
            description=_str(d, "description"),
            tags=split_tags(d.get("tags")),
            mem=_int(d, "mem"),
            vcpus=_int(d, "numVCPU"),
            machine_type=_str(d, "machineType"),
            state=_str(d, "state"),
            disks=[Disk.from_api(x) for x in _list(d, "blockDevs") if isinstance(x, dict)],
            nics=[NetDev.from_api(x) for x in _list(d, "netDevs") if isinstance(x, dict)],
            boot_devices=[str(x) for x in _list(d, "bootDevices")],
            # snapUUIDs is oldest first (API notes); keep the order.
            snap_uuids=[str(x) for x in _list(d, "snapUUIDs")],
            source_vm_uuid=_str(d, "sourceVirDomainUUID"),
            raw=dict(d),
            guest_agent_state=_str(d, "guestAgentState"),
        )

    @property
    def is_replica(self) -> bool:
        """A replication target: cannot be snapshotted the normal way."""
        return bool(self.source_vm_uuid)

    @property
    def is_off(self) -> bool:
        """Powered off: its disks can be swapped, it can be renamed or deleted safely."""
        return self.state in VM_OFF_STATES

    def disk(self, uuid: str) -> Disk | None:
        return next((x for x in self.disks if x.uuid == uuid), None)


@dataclass(frozen=True)
class DeviceSnapshot:
    """One disk inside a VM snapshot.

    `serial_source` says where `serial` came from: "device" (deviceSnapshots[].
    serialNumber), "snapshot" (the record lacked it, so the snapshot-wide
    domain.snapshotSerialNumber is used) or "none".
    """

    disk_uuid: str
    serial: int | None
    serial_source: str = "device"


@dataclass(frozen=True)
class Snapshot:
    """A VM snapshot from GET /VirDomainSnapshot; its serials feed snapDiff."""

    uuid: str
    vm_uuid: str
    label: str
    timestamp: int
    type: str
    replication: bool
    devices: list[DeviceSnapshot]
    domain: VM | None
    serial: int | None

    @classmethod
    def from_api(cls, d: dict[str, Any]) -> Snapshot:
        raw_domain = d.get("domain")
        domain = None
        serial = None
        if isinstance(raw_domain, dict):
            domain = VM.from_api(raw_domain)
            serial = _opt_int(raw_domain.get("snapshotSerialNumber"))
        if serial is None:
            serial = _opt_int(d.get("snapshotSerialNumber"))
        devices = []
        for item in _list(d, "deviceSnapshots"):
            if not isinstance(item, dict):
                continue
            own = _opt_int(item.get("serialNumber"))
            if own is not None:
                devices.append(DeviceSnapshot(_str(item, "uuid"), own, "device"))
            elif serial is not None:
                devices.append(DeviceSnapshot(_str(item, "uuid"), serial, "snapshot"))
            else:
                devices.append(DeviceSnapshot(_str(item, "uuid"), None, "none"))
        return cls(
            uuid=_str(d, "uuid"),
            vm_uuid=_str(d, "domainUUID"),
            label=_str(d, "label"),
            timestamp=_int(d, "timestamp"),
            type=_str(d, "type"),
            replication=_bool(d, "replication"),
            devices=devices,
            domain=domain,
            serial=serial,
        )

    def device(self, disk_uuid: str) -> DeviceSnapshot | None:
        return next((x for x in self.devices if x.disk_uuid == disk_uuid), None)

    def serial_for(self, disk_uuid: str) -> int | None:
        """The snapDiff serial of this disk in this snapshot (None: not snapshotted)."""
        dev = self.device(disk_uuid)
        return dev.serial if dev else None


@dataclass(frozen=True)
class VirtualDisk:
    """An uploaded image from GET /VirtualDisk (restore attaches it)."""

    uuid: str
    name: str
    capacity: int

    @classmethod
    def from_api(cls, d: dict[str, Any]) -> VirtualDisk:
        return cls(_str(d, "uuid"), _str(d, "name"), _int(d, "capacityBytes", _int(d, "capacity")))

    @property
    def is_final(self) -> bool:
        """Uploads are renamed uploading-<n> -> converting-<n> -> <n> (API notes)."""
        return not self.name.startswith(("uploading-", "converting-"))


@dataclass(frozen=True)
class UpdateStatus:
    """Whether the cluster is idle or updating; any doubt counts as updating."""

    idle: bool
    detail: str

    @classmethod
    def from_api(cls, d: Any) -> UpdateStatus:
        """Fail closed: idle only when both phases explicitly say COMPLETE."""
        if not isinstance(d, dict):
            return cls(False, "update status unreadable")
        prepare = d.get("prepareStatus")
        update = d.get("updateStatus")
        # prepareStatus "is sometimes str, sometimes dict" (the vendor's
        # module_utils/hypercore_version.py): a bare string is the state itself.
        prep_state = prepare.get("state") if isinstance(prepare, dict) else prepare
        prep_state = prep_state if isinstance(prep_state, str) else None
        master = update.get("masterState") if isinstance(update, dict) else None
        if prep_state == "COMPLETE" and master == "COMPLETE":
            return cls(True, "idle")
        return cls(False, f"update in progress (prepare={prep_state}, update={master})")


TERMINAL_OK = "COMPLETE"
TERMINAL_FAILED = frozenset({"ERROR", "UNINITIALIZED"})


@dataclass(frozen=True)
class Task:
    """A task's state from GET /TaskTag."""

    tag: str
    state: str
    message: str

    @classmethod
    def from_api(cls, d: dict[str, Any]) -> Task:
        message = render_message(d.get("formattedMessage"), d.get("messageParameters"))
        if not message:
            message = render_message(d.get("formattedDescription"), d.get("descriptionParameters"))
        return cls(_str(d, "taskTag"), _str(d, "state"), message)

    @property
    def finished(self) -> bool:
        return self.state == TERMINAL_OK or self.state in TERMINAL_FAILED

    @property
    def failed(self) -> bool:
        return self.state in TERMINAL_FAILED


def render_message(template: Any, params: Any) -> str:
    """Fill `%@` placeholders in order from the parameter list (HyperCore task messages).

    Missing parameters leave the placeholder visible rather than guessing; extra
    parameters are ignored.
    """
    if not isinstance(template, str):
        return ""
    values = [str(p) for p in params] if isinstance(params, list) else []
    parts = template.split("%@")
    out = [parts[0]]
    for i, part in enumerate(parts[1:]):
        out.append(values[i] if i < len(values) else "%@")
        out.append(part)
    return "".join(out)
