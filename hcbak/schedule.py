"""Cron schedules and durations for jobs, in pure Python.

`hcbak job run --due` is started by the system cron every few minutes and asks each
job "is a scheduled time between your last run and now?". That needs a cron parser
that can step forward and backward, which the standard library lacks; this module
is that small parser (five fields, the syntax of crontab(5)) plus the duration
strings used by `keep_within` and `alert_after` ("36h", "7d", "2w", "1y").

Times are wall-clock fields: an aware datetime is evaluated in its own timezone, a
naive one as given. DST transitions are not special-cased (a result may name a
wall-clock minute that a spring-forward skips); schedule jobs outside 02:00-03:00 where
that matters. `is_due` compares instants, so a skipped minute delays a run, never
repeats one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta

__all__ = ["CronSchedule", "format_duration", "parse_duration"]

_MONTH_NAMES = {
    name: i + 1
    for i, name in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
    )
}
_DOW_NAMES = {name: i for i, name in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_DAYS_IN_MONTH_MAX = {1: 31, 2: 29, 3: 31, 4: 30, 5: 31, 6: 30, 7: 31, 8: 31, 9: 30, 10: 31}
_DAYS_IN_MONTH_MAX.update({11: 30, 12: 31})
# Twenty-eight years repeat the calendar (weekdays and leap days), so any satisfiable
# schedule fires within this many days of any instant.
_SEARCH_DAYS = 366 * 28


@dataclass(frozen=True)
class _Field:
    """One cron field: its range and, for months and weekdays, the names it accepts."""

    name: str
    low: int
    high: int
    names: dict[str, int] | None = None


_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day of month", 1, 31),
    _Field("month", 1, 12, _MONTH_NAMES),
    _Field("day of week", 0, 7, _DOW_NAMES),
)


@dataclass(frozen=True)
class CronSchedule:
    """A parsed five-field cron expression: sets of allowed values per field."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday .. 6 = Saturday (7 folded onto 0)
    days_restricted: bool
    weekdays_restricted: bool

    @classmethod
    def parse(cls, text: str) -> CronSchedule:
        """Parse `text`; raise ValueError with a message fit for the user."""
        source = " ".join(text.split())
        expanded = _MACROS.get(source.lower(), source)
        parts = expanded.split(" ")
        if len(parts) != 5:
            raise ValueError(
                f"cron schedule needs 5 fields (minute hour day month weekday), got {len(parts)}"
            )
        sets = [_parse_field(part, spec) for part, spec in zip(parts, _FIELDS, strict=True)]
        weekdays = frozenset(d % 7 for d in sets[4])
        schedule = cls(
            text=source,
            minutes=frozenset(sets[0]),
            hours=frozenset(sets[1]),
            days=frozenset(sets[2]),
            months=frozenset(sets[3]),
            weekdays=weekdays,
            days_restricted=not parts[2].startswith("*"),
            weekdays_restricted=not parts[4].startswith("*"),
        )
        if not schedule.weekdays_restricted and not any(
            min(schedule.days) <= _DAYS_IN_MONTH_MAX[m] for m in schedule.months
        ):
            raise ValueError(f"cron schedule {source!r} never fires (no such day in its months)")
        return schedule

    def matches(self, when: datetime) -> bool:
        """True when `when` (to the minute) is a scheduled time."""
        return (
            when.minute in self.minutes
            and when.hour in self.hours
            and self._day_matches(when.date())
        )

    def next_after(self, when: datetime) -> datetime:
        """The first scheduled minute strictly after `when`."""
        start = when.replace(second=0, microsecond=0) + timedelta(minutes=1)
        day = start.date()
        for _ in range(_SEARCH_DAYS):
            if self._day_matches(day):
                floor = (start.hour, start.minute) if day == start.date() else (0, 0)
                hm = self._first_time_at_or_after(floor)
                if hm is not None:
                    return start.replace(
                        year=day.year, month=day.month, day=day.day, hour=hm[0], minute=hm[1]
                    )
            day += timedelta(days=1)
        raise ValueError(f"cron schedule {self.text!r} never fires")  # pragma: no cover

    def is_due(self, last_run: datetime | None, now: datetime) -> bool:
        """True when a scheduled minute lies in (last_run, now].

        A job that never ran is due: having no backup at all is the state the schedule
        exists to end, so the first `--due` tick after creating a job runs it.
        """
        if last_run is None:
            return True
        return self.next_after(last_run) <= now

    # -- helpers ------------------------------------------------------------------------
    def _day_matches(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        in_days = day.day in self.days
        in_weekdays = (day.isoweekday() % 7) in self.weekdays
        # crontab(5): when both day fields are restricted, either one matching is enough.
        if self.days_restricted and self.weekdays_restricted:
            return in_days or in_weekdays
        return in_days and in_weekdays

    def _first_time_at_or_after(self, floor: tuple[int, int]) -> tuple[int, int] | None:
        for hour in sorted(h for h in self.hours if h >= floor[0]):
            low = floor[1] if hour == floor[0] else 0
            minutes = [m for m in self.minutes if m >= low]
            if minutes:
                return hour, min(minutes)
        return None


def _parse_field(text: str, spec: _Field) -> set[int]:
    values: set[int] = set()
    for item in text.split(","):
        values |= _parse_item(item, spec)
    return values


def _parse_item(item: str, spec: _Field) -> set[int]:
    base, _, step_text = item.partition("/")
    step = 1
    if step_text:
        if not step_text.isdigit() or int(step_text) == 0:
            raise ValueError(f"cron {spec.name}: bad step {step_text!r} in {item!r}")
        step = int(step_text)
    if base == "*":
        low, high = spec.low, spec.high
    elif "-" in base:
        first, _, last = base.partition("-")
        low, high = _value(first, spec), _value(last, spec)
        if low > high:
            raise ValueError(f"cron {spec.name}: range {base!r} runs backwards")
    else:
        low = _value(base, spec)
        # "5/15" means from 5 to the end in steps of 15 (Vixie cron).
        high = spec.high if step_text else low
    return set(range(low, high + 1, step))


def _value(text: str, spec: _Field) -> int:
    lowered = text.lower()
    if spec.names and lowered in spec.names:
        return spec.names[lowered]
    if not text.isdigit():
        raise ValueError(f"cron {spec.name}: {text!r} is not a number")
    number = int(text)
    if not spec.low <= number <= spec.high:
        raise ValueError(f"cron {spec.name}: {number} is outside {spec.low}-{spec.high}")
    return number


# --- durations --------------------------------------------------------------------------
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_DURATION_RE = re.compile(r"(\d+)([smhdwy])")


def parse_duration(text: str) -> timedelta:
    """Parse "36h", "7d", "2w", "1y", "1d12h" (s m h d w y; a year is 365 days)."""
    compact = "".join(text.split()).lower()
    if not compact:
        raise ValueError("empty duration")
    pos = 0
    total = 0
    for match in _DURATION_RE.finditer(compact):
        if match.start() != pos:
            break
        total += int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(compact):
        raise ValueError(
            f"bad duration {text!r}: use a number and a unit s, m, h, d, w or y (e.g. 36h, 7d)"
        )
    return timedelta(seconds=total)


def format_duration(delta: timedelta) -> str:
    """The shortest string `parse_duration` reads back as `delta` (whole seconds)."""
    seconds = int(delta.total_seconds())
    if seconds == 0:
        return "0s"
    parts = []
    for unit in ("y", "w", "d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts)
