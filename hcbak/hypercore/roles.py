"""Which HyperCore roles hcbak's work needs, and reading an account's roles.

Least privilege for a backup account (API notes, "Permissions"): Backup, VM Create/Edit,
VM Delete, VM Power Controls (restore), Cluster Settings (read). Backup needs to
snapshot and to hot-add/remove clones on the worker (VM Create/Edit); restore creates
VMs, uploads and attaches disks, deletes temporary objects and powers VMs on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ADMIN_ROLE = "Admin"
BACKUP_ROLES = frozenset({"Backup", "VM Create/Edit"})
RESTORE_ROLES = frozenset({"VM Create/Edit", "VM Delete", "VM Power Controls"})


@dataclass(frozen=True)
class RoleCheck:
    """Whether the account's roles allow backups and restores, and what is missing."""

    roles: list[str]
    backup_ok: bool
    restore_ok: bool
    missing_backup: list[str]
    missing_restore: list[str]


def check_roles(roles: list[str]) -> RoleCheck:
    """Compare an account's role names with what backup and restore need."""
    have = {r.strip().lower() for r in roles}
    if ADMIN_ROLE.lower() in have:
        return RoleCheck(sorted(roles), True, True, [], [])
    missing_b = sorted(r for r in BACKUP_ROLES if r.lower() not in have)
    missing_r = sorted(r for r in RESTORE_ROLES if r.lower() not in have)
    return RoleCheck(sorted(roles), not missing_b, not missing_r, missing_b, missing_r)


def role_names_from_api(
    username: str, users: list[dict[str, Any]], roles: list[dict[str, Any]]
) -> list[str]:
    """Role names of `username` from `GET /User` (roleUUIDs) and `GET /Role` (uuid, name)."""
    names = {str(r.get("uuid")): str(r.get("name", "")) for r in roles}
    user = next((u for u in users if u.get("username") == username), None)
    if user is None:
        return []
    uuids = user.get("roleUUIDs") or []
    if not isinstance(uuids, list):
        return []
    return sorted(names.get(str(u), str(u)) for u in uuids)
