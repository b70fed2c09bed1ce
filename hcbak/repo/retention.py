"""Retention: which restore points a policy keeps (a pure function, restic semantics).

Points are grouped per (job, VM). Within a group, newest first:
- keep_last N keeps the N newest points;
- keep_daily/weekly/monthly/yearly N keep the newest point of each of the N most
  recent days/ISO weeks/months/years that have points (UTC buckets);
- keep_within D keeps every point no older than D before the group's newest point
  (D in the config's duration syntax: "36h", "7d", "2w", "1y" = 365 days; relative to
  the newest point, not to now, so a backup that stops running never erodes the
  history - restic's choice).
A point is kept when any rule keeps it; the reasons name every rule that did.
An empty policy keeps everything (forgetting must be asked for explicitly), and so
does one whose counts are all 0.

The policy is the job's `hcbak.config.Retention`, the one retention record.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Protocol, TypeVar

from hcbak.config import RETENTION_KEYS, Retention


class PointLike(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def job(self) -> str: ...
    @property
    def vm_uuid(self) -> str: ...
    @property
    def created(self) -> datetime: ...


P = TypeVar("P", bound=PointLike)


_BUCKETS: list[tuple[str, Callable[[datetime], Hashable]]] = [
    ("daily", lambda t: (t.year, t.month, t.day)),
    ("weekly", lambda t: t.isocalendar()[:2]),
    ("monthly", lambda t: (t.year, t.month)),
    ("yearly", lambda t: t.year),
]


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def select(
    points: Iterable[P], policy: Retention, now: datetime | None = None
) -> list[tuple[P, bool, list[str]]]:
    """Decide per point: (point, keep, reasons). Newest first within each group.

    `now` is accepted for interface stability; restic semantics make keep_within
    relative to the newest point, so the result does not depend on it. A malformed
    keep_within raises ValueError (the config and the CLI refuse one before).
    """
    groups: dict[tuple[str, str], list[P]] = {}
    for p in points:
        groups.setdefault((p.job, p.vm_uuid), []).append(p)
    out: list[tuple[P, bool, list[str]]] = []
    for key in sorted(groups):
        out += _select_group(groups[key], policy)
    return out


def _select_group(points: Sequence[P], policy: Retention) -> list[tuple[P, bool, list[str]]]:
    ordered = sorted(points, key=lambda p: (_utc(p.created), p.id), reverse=True)
    if not any(getattr(policy, key) for key in RETENTION_KEYS):
        return [(p, True, ["no retention policy"]) for p in ordered]
    reasons: list[list[str]] = [[] for _ in ordered]
    if policy.keep_last:
        for i in range(min(policy.keep_last, len(ordered))):
            reasons[i].append(f"last {policy.keep_last}")
    for name, bucket in _BUCKETS:
        count = getattr(policy, f"keep_{name}")
        if not count:
            continue
        seen: Hashable = object()
        left = count
        for i, p in enumerate(ordered):
            if left <= 0:
                break
            b = bucket(_utc(p.created))
            if b != seen:
                reasons[i].append(f"{name} {count}")
                seen = b
                left -= 1
    within = policy.within()
    if within is not None and ordered:
        limit = _utc(ordered[0].created) - within
        for i, p in enumerate(ordered):
            if _utc(p.created) >= limit:
                reasons[i].append(f"within {policy.keep_within}")
    return [(p, bool(r), r) for p, r in zip(ordered, reasons, strict=True)]
