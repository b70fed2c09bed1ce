"""The simulator's records and request checks: constants, errors, record builders.

Shared by the model (state and tasks) and the operations (what the REST calls do),
which both import this module and not each other's internals.
"""

from __future__ import annotations

import os
import secrets
import uuid as uuidlib
from pathlib import Path
from typing import Any

from hcbak.sim.disks import Interval

Json = dict[str, Any]

TERMINAL = ("COMPLETE", "ERROR", "UNINITIALIZED")
MAX_TASKS = 5000
DISK_TYPES = ("VIRTIO_DISK", "SCSI_DISK", "IDE_DISK", "IDE_CDROM", "IDE_FLOPPY", "NVRAM", "VTPM")
NVRAM_SIZE = 540672  # what real clusters report for an NVRAM device
ICOS_VERSION = "9.4.30.217736"
# HyperCore 9.7.1 adds `attemptQuiesce` to snapshot creation in its v2 API (API notes).
# The simulator serves /rest/v2 only from that version (set_cluster_version).
V2_QUIESCE_SINCE = (9, 7, 1)
# guestAgentState of a running VM whose guest agent answers (vendor's RestAPIExamples,
# Zabbix template); any other value means no agent. The simulator's "no agent" value
# is assumed.
GUEST_AGENT_AVAILABLE = "AVAILABLE"
GUEST_AGENT_ABSENT = "UNAVAILABLE"
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
# machineType -> machineTypeKeyword (9.3+), from the vendor collection's module_utils/vm.py
# (VmMachineType maps; the keyword is one of bios, uefi, tpm, tpm-compatible).
MACHINE_TYPE_KEYWORDS = {
    "scale-5.4": "bios",
    "scale-6.4": "bios",
    "scale-7.2": "bios",
    "scale-bios-9.3": "bios",
    "scale-bios-lsi-9.2": "bios",
    "scale-8.10": "uefi",
    "scale-uefi-9.3": "uefi",
    "scale-uefi-tpm-9.2": "tpm",
    "scale-uefi-tpm-9.3": "tpm",
    "scale-uefi-tpm-compatible-9.3": "tpm-compatible",
}
# options.machineTypeKeyword on create -> the 9.3 machine type it selects (same source).
KEYWORD_MACHINE_TYPES = {
    "bios": "scale-bios-9.3",
    "uefi": "scale-uefi-9.3",
    "tpm": "scale-uefi-tpm-9.3",
    "tpm-compatible": "scale-uefi-tpm-compatible-9.3",
}
NIC_TYPES = ("VIRTIO", "INTEL_E1000", "RTL8139")
# VirDomain.affinityStrategy of a VM without node affinity (vendor fixtures).
DEFAULT_AFFINITY = {"strictAffinity": False, "preferredNodeUUID": "", "backupNodeUUID": ""}


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


def session_uuid(session: str) -> str:
    """The uuid-shaped `sessionID` of a task record (real clusters show a uuid there).

    Derived from the session so one session's tasks share it, but never the session
    secret itself: any signed-in user can read task records. Basic-auth calls have no
    session and get the nil uuid.
    """
    if not session:
        return str(uuidlib.UUID(int=0))
    return str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, "hcbak-sim-session:" + session))


def user_record(name: str, password: str, roles: tuple[str, ...] | list[str]) -> Json:
    return {"uuid": new_uuid(), "username": name, "password": password, "roles": list(roles)}


def nic_record(vm_uuid: str, i: int) -> Json:
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


def check_nic_type(value: Any) -> str:
    if value not in NIC_TYPES:
        raise RestError(400, f"Unknown net device type {value!r}")
    return str(value)


def check_disk_type(value: Any) -> str:
    if value not in DISK_TYPES:
        raise RestError(400, f"Unknown block device type {value!r}")
    return str(value)


def int_field(body: Json, key: str) -> int:
    value = body.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise RestError(400, f"Field {key} must be a non-negative integer")
    return value


def allocated_bytes(path: Path) -> int:
    try:
        return path.stat().st_blocks * 512
    except FileNotFoundError:
        return 0


def data_extents(path: Path) -> list[Interval]:
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
