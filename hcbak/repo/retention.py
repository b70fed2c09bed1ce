"""Retention: which restore points a policy keeps (a pure function, restic semantics).

Points are grouped per (job, VM). Within a group, newest first:
- keep_last N keeps the N newest points;
- keep_hourly/daily/weekly/monthly/yearly N keep the newest point of each of the N
  most recent hours/days/ISO weeks/months/years that have points (UTC buckets);
- keep_within D keeps every point no older than D before the group's newest point
  (D like "7d", "2w", "1y6m", "36h"; relative to the newest point, not to now, so
  a backup that stops running never erodes the history - restic's choice).
A point is kept when any rule keeps it; the reasons name every rule that did.
An empty policy keeps everything (forgetting must be asked for explicitly).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

from hcbak.errors import UsageError


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


@dataclass(frozen=True)
class Policy:
    keep_last: int | None = None
    keep_hourly: int | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None
    keep_yearly: int | None = None
    keep_within: str | None = None

    def is_empty(self) -> bool:
        counts = (
            self.keep_last,
            self.keep_hourly,
            self.keep_daily,
            self.keep_weekly,
            self.keep_monthly,
            self.keep_yearly,
        )
        return all(not c for c in counts) and not self.keep_within

    @classmethod
    def from_config(cls, retention: Any) -> Policy:
        """Build from hcbak.config.Retention (or anything with the same attributes)."""
        names = ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly")
        kw = {n: getattr(retention, n, None) for n in (*names, "keep_yearly", "keep_within")}
        return cls(**kw)


_BUCKETS: list[tuple[str, Callable[[datetime], Hashable]]] = [
    ("hourly", lambda t: (t.year, t.month, t.day, t.hour)),
    ("daily", lambda t: (t.year, t.month, t.day)),
    ("weekly", lambda t: t.isocalendar()[:2]),
    ("monthly", lambda t: (t.year, t.month)),
    ("yearly", lambda t: t.year),
]
_WITHIN = re.compile(r"^(?:(\d+)y)?(?:(\d+)m)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?$")


def parse_within(text: str) -> tuple[int, int, int]:
    """'1y6m2w3d4h' -> (years, months, hours) components for calendar arithmetic."""
    m = _WITHIN.match(text.strip())
    if not text.strip() or m is None:
        raise UsageError(f"keep_within {text!r} is not a duration like 7d, 2w, 1y6m or 36h")
    y, mo, w, d, h = (int(g) if g else 0 for g in m.groups())
    return y, mo, (w * 7 + d) * 24 + h


def subtract(t: datetime, years: int, months: int, hours: int) -> datetime:
    """Calendar subtraction (clamping the day: Mar 31 - 1 month = Feb 28/29)."""
    total = t.year * 12 + (t.month - 1) - years * 12 - months
    year, month = divmod(total, 12)
    month += 1
    day = t.day
    while True:
        try:
            moved = t.replace(year=year, month=month, day=day)
            break
        except ValueError:
            day -= 1
    return moved - timedelta(hours=hours)


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def select(
    points: Iterable[P], policy: Policy | Any, now: datetime | None = None
) -> list[tuple[P, bool, list[str]]]:
    """Decide per point: (point, keep, reasons). Newest first within each group.

    `policy` is a `Policy` or hcbak.config.Retention. `now` is accepted for interface
    stability; restic semantics make keep_within relative to the newest point, so the
    result does not depend on it.
    """
    if not isinstance(policy, Policy):
        policy = Policy.from_config(policy)
    groups: dict[tuple[str, str], list[P]] = {}
    for p in points:
        groups.setdefault((p.job, p.vm_uuid), []).append(p)
    out: list[tuple[P, bool, list[str]]] = []
    for key in sorted(groups):
        out += _select_group(groups[key], policy)
    return out


def _select_group(points: Sequence[P], policy: Policy) -> list[tuple[P, bool, list[str]]]:
    ordered = sorted(points, key=lambda p: (_utc(p.created), p.id), reverse=True)
    if policy.is_empty():
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
    if policy.keep_within and ordered:
        y, mo, h = parse_within(policy.keep_within)
        limit = subtract(_utc(ordered[0].created), y, mo, h)
        for i, p in enumerate(ordered):
            if _utc(p.created) >= limit:
                reasons[i].append(f"within {policy.keep_within}")
    return [(p, bool(r), r) for p, r in zip(ordered, reasons, strict=True)]
