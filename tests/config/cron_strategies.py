"""Hypothesis strategies for five-field cron text, shared by the schedule tests."""

from __future__ import annotations

from datetime import datetime

from hypothesis import strategies as st


def cron_field(low: int, high: int) -> st.SearchStrategy[str]:
    """One cron field over [low, high]: `*`, or a list of values, ranges and steps."""
    number = st.integers(low, high)
    single = number.map(str)
    ranged = st.tuples(number, number).map(lambda t: f"{min(t)}-{max(t)}")
    step = st.tuples(st.sampled_from(["*", f"{low}-{high}"]), st.integers(1, high - low + 1))
    items = st.one_of(single, ranged, step.map(lambda t: f"{t[0]}/{t[1]}"))
    return st.one_of(st.just("*"), st.lists(items, min_size=1, max_size=3).map(",".join))


def cron_schedules(last_day: int = 31) -> st.SearchStrategy[str]:
    """Whole schedules; `last_day` bounds the day-of-month field (28 keeps every month)."""
    return st.tuples(
        cron_field(0, 59), cron_field(0, 23), cron_field(1, last_day), cron_field(1, 12),
        cron_field(0, 7),
    ).map(" ".join)  # fmt: skip


instants = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2090, 1, 1))
