"""What Object Lock kept: the objects a forget or prune deleted but could not free.

On an S3 bucket with Object Lock, deleting a locked object only hides it (a delete
marker); its locked version stays, and its space with it, until the retention ends.
`forget` and `prune` never fail on that: they report it (`LockedObjects`), and every
later prune tries again to free the hidden versions, so a prune after the retention
date really frees them (docs/format.md, "Object Lock").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass
class LockedObjects:
    """`keys`: deleted repository objects whose versions Object Lock still holds, with
    the latest retention among them (`until`); `freed`: versions removed now."""

    keys: list[str] = field(default_factory=list)
    until: datetime | None = None
    freed: int = 0

    def add(self, key: str, until: datetime | None) -> None:
        if key not in self.keys:
            self.keys.append(key)
        if until is not None and (self.until is None or until > self.until):
            self.until = until

    def to_json(self) -> dict[str, Any]:
        return {
            "locked_objects": len(self.keys),
            "locked_until": self.until.isoformat() if self.until is not None else None,
            "versions_freed": self.freed,
        }

    def line(self) -> str | None:
        """The one-line report, None when nothing stays locked."""
        if not self.keys:
            return None
        when = f" until {self.until:%Y-%m-%d %H:%M:%S} UTC" if self.until is not None else ""
        return (
            f"{len(self.keys)} deleted objects stay locked by Object Lock{when}: hidden, "
            "not yet freed; a prune after that date frees them"
        )


def free_deleted(store: Any) -> LockedObjects | None:
    """Ask an Object Lock store to free the versions of its deleted objects; None for a
    store without Object Lock (a folder, an S3 repository without immutable_days)."""
    sweep = getattr(store, "free_deleted", None)
    if sweep is None or not getattr(store, "immutable_days", 0):
        return None
    result: LockedObjects = sweep()
    return result
