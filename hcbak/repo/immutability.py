"""The Object Lock audit of `repo verify`: points locked for less than promised.

A repository with `immutable_days` (S3 Object Lock) promises that each point, with
everything it needs, cannot be deleted until its creation + N days. The backup keeps
the promise by writing objects with retention and extending the packs and `config` a
new point shares with older ones (repository.py, `_protect_point`). This audit checks
what the store says now: a point committed before immutability was switched on, a
retention shortened in GOVERNANCE mode by a key allowed to bypass it, or a run that
died between its extension and its manifest shows up here, named, as a warning.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hcbak.repo.pack import pack_key
from hcbak.repo.settings import CONFIG_KEY

# retention is set with the gateway's idea of "now": this much drift is not a finding
TOLERANCE = timedelta(minutes=5)


def underprotected(repo: Any, now: datetime | None = None) -> list[str]:
    """One line per object whose Object Lock retention ends before a point that needs
    it says it should; [] for a store without `immutable_days`."""
    store = repo.store
    days = int(getattr(store, "immutable_days", 0) or 0)
    if not days:
        return []
    now = now or datetime.now(UTC)
    need: dict[str, tuple[datetime, str]] = {}  # key -> (latest promise, its point)

    def needs(key: str, promised: datetime, point_id: str) -> None:
        if key not in need or need[key][0] < promised:
            need[key] = (promised, point_id)

    for summary in repo.list_points():
        created = summary.created
        if created.tzinfo is None:
            created = created.replace(tzinfo=UTC)
        promised = created + timedelta(days=days)
        if promised <= now:
            continue  # that promise is kept: its time is over
        point = repo.load_point(summary.id)
        needs(f"points/{summary.id}", promised, summary.id)
        needs(CONFIG_KEY, promised, summary.id)
        for disk in point.disks:
            for block_id in disk.block_map.ids():
                where = repo.locate(block_id)
                if where is not None:
                    needs(pack_key(where.pack), promised, summary.id)
    problems = []
    for key, (promised, point_id) in sorted(need.items()):
        until = store.retained_until(key)
        if until is None or until + TOLERANCE < promised:
            held = until.isoformat(timespec="seconds") if until else "not locked"
            problems.append(
                f"point {point_id[:12]} needs {key} locked until "
                f"{promised.isoformat(timespec='seconds')}: it is {held}"
            )
    return problems
