"""cron -> OnCalendar=: the timer fires on exactly the cron schedule's minutes.

Two checks: hypothesis against a small reader of the OnCalendar= syntax written here
(independent of the converter), and, where systemd is installed, systemd's own
calendar arithmetic (`systemd-analyze calendar --base-time`) against
`CronSchedule.next_after`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hcbak.schedule import CronSchedule
from hcbak.systemd_units import crontab_line, on_calendar, service_unit, timer_unit

from .cron_strategies import cron_schedules, instants

_WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]  # systemd order


schedules = cron_schedules()


def _values(text: str, names: list[str] | None = None) -> set[int] | None:
    """One OnCalendar= component: None for `*`, else its values (`a`, `a..b`, lists)."""
    if text == "*":
        return None

    def value(word: str) -> int:
        return names.index(word) if names else int(word)

    out: set[int] = set()
    for item in text.split(","):
        first, _, last = item.partition("..")
        out |= set(range(value(first), value(last or first) + 1))
    return out


def _calendar_matches(expr: str, when: datetime) -> bool:
    match = re.fullmatch(r"(?:(\S+) )?\*-(\S+)-(\S+) (\S+):(\S+):00", expr)
    assert match, expr
    weekdays, month, day, hour, minute = match.groups()
    wanted = [
        (_values(weekdays or "*", _WEEKDAYS), when.weekday()),
        (_values(month), when.month),
        (_values(day), when.day),
        (_values(hour), when.hour),
        (_values(minute), when.minute),
    ]
    return all(allowed is None or actual in allowed for allowed, actual in wanted)


@settings(max_examples=300, deadline=None)
@given(schedules, instants, st.integers(0, 60 * 24 * 40))
def test_on_calendar_fires_on_exactly_the_cron_minutes(
    text: str, when: datetime, offset: int
) -> None:
    try:
        schedule = CronSchedule.parse(text)
    except ValueError:
        return  # e.g. "day 31 in February only": cron itself refuses it
    exprs = on_calendar(schedule)
    minute = when.replace(second=0, microsecond=0)
    for probe in (minute, minute + timedelta(minutes=offset), schedule.next_after(minute)):
        fires = any(_calendar_matches(e, probe) for e in exprs)
        assert fires == schedule.matches(probe), (text, exprs, probe)


@pytest.mark.parametrize(
    ("cron", "expected"),
    [
        ("0 1 * * *", ("*-*-* 01:00:00",)),
        ("30 3 * * sun", ("Sun *-*-* 03:30:00",)),
        ("*/15 8-18 * * mon-fri", ("Mon..Fri *-*-* 08..18:00,15,30,45:00",)),
        ("0 2 1 * *", ("*-*-01 02:00:00",)),
        ("0 4 * jan,jul 7", ("Sun *-01,07-* 04:00:00",)),
        # both day fields restricted: cron runs on either, so two lines
        ("0 0 1,15 * fri", ("*-*-01,15 00:00:00", "Fri *-*-* 00:00:00")),
        ("@weekly", ("Sun *-*-* 00:00:00",)),
        ("0 0 2 * 0-6", ("*-*-* 00:00:00",)),  # "the 2nd or any weekday": every day
        ("0 0 * * 5-7", ("Fri..Sun *-*-* 00:00:00",)),
    ],
)
def test_known_schedules(cron: str, expected: tuple[str, ...]) -> None:
    assert on_calendar(CronSchedule.parse(cron)) == expected


CALENDAR_CASES = [
    "0 1 * * *",
    "*/7 */5 * * *",
    "30 3 * * sun",
    "0 0 1,15 * fri",
    "0 0 1-7 * mon",
    "15 2 31 * *",
    "0 12 29 2 *",
    "5/20 1,13 */2 feb-apr sat,sun",
    "0 6 * * 1-5",
    "59 23 * dec 0",
]


def test_a_zone_is_appended_to_every_expression() -> None:
    assert on_calendar(CronSchedule.parse("0 0 1 * mon"), "UTC") == (
        "*-*-01 00:00:00 UTC",
        "Mon *-*-* 00:00:00 UTC",
    )


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (no systemd)"
)
@pytest.mark.parametrize("cron", CALENDAR_CASES)
def test_systemd_computes_the_same_times_as_cron(cron: str) -> None:
    base = datetime(2026, 12, 3, 14, 7, 30)
    count = 25
    schedule = CronSchedule.parse(cron)
    proc = subprocess.run(
        [
            "systemd-analyze",
            "calendar",
            f"--base-time=@{int(base.replace(tzinfo=UTC).timestamp())}",
            f"--iterations={count}",
            *on_calendar(schedule),
        ],
        env={**os.environ, "TZ": "UTC"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    found = re.findall(r"(?:Next elapse|Iter\. #\d+): \w+ (\S+ \S+) UTC", proc.stdout)
    systemd_times = sorted({datetime.fromisoformat(t) for t in found})[:count]
    cron_times = []
    when = base
    for _ in range(count):
        when = schedule.next_after(when)
        cron_times.append(when)
    assert systemd_times == cron_times


def test_units_run_job_run_due_and_catch_up() -> None:
    times = [
        ("nightly", "0 1 * * *"),
    ]
    from hcbak.systemd_units import plan_times

    timer = timer_unit(plan_times(times))
    assert "Persistent=true" in timer and "OnCalendar=*-*-* 01:00:00" in timer
    assert "OnCalendar=*-*-* *:00/10:00" in timer_unit([], every_minutes=10)
    service = service_unit(["/opt/my hcbak/hcbak", "--config", "/etc/50%/c$x.yaml"], system=False)
    # a space is quoted; % and $ would be systemd specifiers and variables
    assert 'ExecStart="/opt/my hcbak/hcbak" --config /etc/50%%/c$$x.yaml' in service
    assert "network-online" not in service
    assert "After=network-online.target" in service_unit(["/bin/hcbak"], system=True)
    assert crontab_line(["/bin/hcbak", "job", "run", "--due"]) == (
        "*/15 * * * * /bin/hcbak job run --due"
    )
