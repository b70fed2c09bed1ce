"""Retention: which restore points a policy keeps (a pure function, restic semantics).

Points are grouped per (job, VM). Within a group, newest first:
- keep_last N keeps the N newest points;
- keep_hourly/daily/weekly/monthly/yearly N keep the newest point of each of the N
  most recent hours/days/ISO weeks/months/years that have points (UTC buckets);
- keep_within D keeps every point no older than D before the group's newest point
  (D in the config's duration syntax: "36h", "7d", "2w", "1y" = 365 days; relative to
  the newest point, not to now, so a backup that stops running never erodes the
  history - restic's choice).
A point is kept when any rule keeps it; the reasons name every rule that did.
An empty policy keeps everything (forgetting must be asked for explicitly).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

from hcbak.errors import UsageError
from hcbak.schedule import parse_duration


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


def parse_within(text: str) -> timedelta:
    """keep_within uses the config's duration syntax (hcbak.schedule.parse_duration):
    a number and a unit s, m (minutes), h, d, w, y (365 days), e.g. 7d, 2w, 1d12h."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"keep_within: {exc}")


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
        limit = _utc(ordered[0].created) - parse_within(policy.keep_within)
        for i, p in enumerate(ordered):
            if _utc(p.created) >= limit:
                reasons[i].append(f"within {policy.keep_within}")
    return [(p, bool(r), r) for p, r in zip(ordered, reasons, strict=True)]
