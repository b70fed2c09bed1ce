"""Cron schedules and durations: pure logic, tested with hypothesis and known cases."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hcbak.schedule import CronSchedule, format_duration, parse_duration

from .cron_strategies import cron_field, cron_schedules, instants

MINUTE = timedelta(minutes=1)


# Frequent schedules (every day, several times a day) keep brute-force checks cheap.
frequent = st.tuples(cron_field(0, 59), cron_field(0, 23)).map(lambda t: f"{t[0]} {t[1]} * * *")
any_schedule = cron_schedules(last_day=28)


@settings(max_examples=150, deadline=None)
@given(any_schedule, instants)
def test_next_after_is_a_later_matching_minute(text: str, when: datetime) -> None:
    schedule = CronSchedule.parse(text)
    nxt = schedule.next_after(when)
    assert nxt > when and schedule.matches(nxt)
    assert nxt.second == 0 and nxt.microsecond == 0


@settings(max_examples=60, deadline=None)
@given(frequent, instants)
def test_next_after_skips_no_matching_minute(text: str, when: datetime) -> None:
    schedule = CronSchedule.parse(text)
    nxt = schedule.next_after(when)
    minute = when.replace(second=0, microsecond=0) + MINUTE
    while minute < nxt:
        assert not schedule.matches(minute)
        minute += MINUTE


@settings(max_examples=60, deadline=None)
@given(frequent, instants, st.integers(0, 2 * 24 * 60), st.integers(0, 59))
def test_is_due_exactly_when_a_scheduled_minute_passed(
    text: str, last: datetime, minutes_later: int, seconds: int
) -> None:
    schedule = CronSchedule.parse(text)
    now = last + timedelta(minutes=minutes_later, seconds=seconds)
    minute = last.replace(second=0, microsecond=0)
    passed = False
    while minute <= now:
        passed = passed or (minute > last and schedule.matches(minute))
        minute += MINUTE
    assert schedule.is_due(last, now) == passed
    assert schedule.is_due(None, now)


@pytest.mark.parametrize(
    ("text", "after", "expected"),
    [
        ("0 1 * * *", datetime(2026, 3, 1, 1, 0), datetime(2026, 3, 2, 1, 0)),
        ("*/15 * * * *", datetime(2026, 3, 1, 1, 7, 30), datetime(2026, 3, 1, 1, 15)),
        ("30 2 * * mon-fri", datetime(2026, 11, 27, 3, 0), datetime(2026, 11, 30, 2, 30)),
        ("0 0 29 feb *", datetime(2026, 1, 1), datetime(2028, 2, 29)),
        ("0 0 1 * 0", datetime(2026, 11, 27), datetime(2026, 11, 29)),  # dom OR dow
        ("@daily", datetime(2026, 11, 27, 5), datetime(2026, 11, 28)),
        ("5/20 * * * *", datetime(2026, 1, 1, 0, 6), datetime(2026, 1, 1, 0, 25)),
    ],
)
def test_known_schedules(text: str, after: datetime, expected: datetime) -> None:
    assert CronSchedule.parse(text).next_after(after) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("* * * *", "5 fields"),
        ("60 * * * *", "minute: 60 is outside 0-59"),
        ("* * 0 * *", "day of month: 0 is outside 1-31"),
        ("* * * 13 *", "month: 13"),
        ("* * * * 8", "day of week: 8"),
        ("5-1 * * * *", "runs backwards"),
        ("*/0 * * * *", "bad step"),
        ("a * * * *", "not a number"),
        ("0 0 30 2 *", "never fires"),
    ],
)
def test_bad_schedules_are_rejected_with_reason(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CronSchedule.parse(text)


@given(st.integers(0, 200 * 365 * 86400))
def test_duration_format_parses_back(seconds: int) -> None:
    delta = timedelta(seconds=seconds)
    assert parse_duration(format_duration(delta)) == delta


@given(st.lists(st.tuples(st.integers(0, 999), st.sampled_from("smhdwy")), min_size=1))
def test_duration_sums_its_parts(parts: list[tuple[int, str]]) -> None:
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 365 * 86400}
    text = "".join(f"{n}{u}" for n, u in parts)
    assert parse_duration(text) == timedelta(seconds=sum(n * unit[u] for n, u in parts))


@pytest.mark.parametrize("text", ["", "36", "h", "2 days", "1.5h", "-1d", "7dd"])
def test_bad_durations_are_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_known_durations() -> None:
    assert parse_duration("36h") == timedelta(hours=36)
    assert parse_duration("2w") == timedelta(days=14)
    assert parse_duration("1y") == timedelta(days=365)
    assert parse_duration("1d12h") == timedelta(hours=36)
