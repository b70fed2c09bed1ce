"""Retention is a pure function: properties proved with hypothesis, cases by example."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hcbak.config import Retention
from hcbak.repo.retention import select


@dataclass(frozen=True)
class P:
    id: str
    job: str
    vm_uuid: str
    created: datetime


BASE = datetime(2026, 6, 1, tzinfo=UTC)

points_st = st.lists(
    st.builds(
        lambda n, vm, job, hours: P(f"p{n}-{hours}", job, vm, BASE - timedelta(hours=hours)),
        st.integers(0, 10**6),
        st.sampled_from(["vm-a", "vm-b"]),
        st.sampled_from(["nightly", "weekly"]),
        st.integers(0, 24 * 800),
    ),
    max_size=40,
    unique_by=lambda p: p.id,
)
count = st.one_of(st.none(), st.integers(0, 5))
policy_st = st.builds(
    Retention,
    keep_last=count,
    keep_daily=count,
    keep_weekly=count,
    keep_monthly=count,
    keep_yearly=count,
    keep_within=st.one_of(st.none(), st.sampled_from(["1d", "2w", "30m", "1y", "36h", "1d12h"])),
)


def kept(points: list[P], policy: Retention) -> set[str]:
    return {p.id for p, keep, _ in select(points, policy, BASE) if keep}


@settings(max_examples=80, deadline=None)
@given(points_st, policy_st)
def test_newest_point_of_each_group_is_kept_when_any_rule_applies(
    points: list[P], policy: Retention
) -> None:
    if policy.is_empty():
        return
    keep = kept(points, policy)
    for key in {(p.job, p.vm_uuid) for p in points}:
        group = [p for p in points if (p.job, p.vm_uuid) == key]
        newest = max(group, key=lambda p: (p.created, p.id))
        if (
            any(
                (
                    policy.keep_last,
                    policy.keep_daily,
                    policy.keep_weekly,
                    policy.keep_monthly,
                    policy.keep_yearly,
                )
            )
            or policy.keep_within
        ):
            assert newest.id in keep


@settings(max_examples=80, deadline=None)
@given(points_st, policy_st)
def test_select_is_idempotent(points: list[P], policy: Retention) -> None:
    first = kept(points, policy)
    survivors = [p for p in points if p.id in first]
    assert kept(survivors, policy) == first


@settings(max_examples=80, deadline=None)
@given(points_st, st.integers(1, 5))
def test_keep_last_keeps_exactly_the_n_newest_per_group(points: list[P], n: int) -> None:
    keep = kept(points, Retention(keep_last=n))
    for key in {(p.job, p.vm_uuid) for p in points}:
        group = sorted(
            (p for p in points if (p.job, p.vm_uuid) == key),
            key=lambda p: (p.created, p.id),
            reverse=True,
        )
        assert {p.id for p in group[:n]} == {p.id for p in group if p.id in keep}


@settings(max_examples=100, deadline=None)
@given(points_st, policy_st)
def test_every_point_gets_a_decision_and_kept_points_have_reasons(
    points: list[P], policy: Retention
) -> None:
    result = select(points, policy, BASE)
    assert sorted(p.id for p, _, _ in result) == sorted(p.id for p in points)
    assert all(bool(reasons) == keep for _, keep, reasons in result)


def test_empty_policy_keeps_everything() -> None:
    pts = [P(str(i), "j", "v", BASE - timedelta(days=i)) for i in range(5)]
    assert kept(pts, Retention()) == {p.id for p in pts}


def test_daily_keeps_newest_point_of_each_of_the_last_n_days() -> None:
    pts = [
        P("d0-late", "j", "v", BASE + timedelta(hours=20)),
        P("d0-early", "j", "v", BASE + timedelta(hours=2)),
        P("d1", "j", "v", BASE - timedelta(hours=3)),
        P("d5", "j", "v", BASE - timedelta(days=5)),
        P("d9", "j", "v", BASE - timedelta(days=9)),
    ]
    result = {p.id: reasons for p, keep, reasons in select(pts, Retention(keep_daily=3), BASE)}
    assert [k for k, r in result.items() if r] == ["d0-late", "d1", "d5"]
    assert result["d0-late"] == ["daily 3"]


def test_keep_within_is_relative_to_the_newest_point() -> None:
    pts = [P(str(i), "j", "v", BASE - timedelta(days=30 + i)) for i in range(10)]
    assert kept(pts, Retention(keep_within="3d")) == {"0", "1", "2", "3"}


def test_groups_are_per_vm_and_job() -> None:
    pts = [P("a", "j", "v1", BASE), P("b", "j", "v2", BASE - timedelta(days=1))]
    assert kept(pts, Retention(keep_last=1)) == {"a", "b"}


def test_all_zero_counts_keep_everything() -> None:
    pts = [P(str(i), "j", "v", BASE - timedelta(days=i)) for i in range(3)]
    result = select(pts, Retention(keep_last=0, keep_daily=0), BASE)
    assert [reasons for _, _, reasons in result] == [["no retention policy"]] * 3


def test_keep_within_uses_the_config_duration_syntax() -> None:
    def within(text: str) -> timedelta | None:
        return Retention(keep_within=text).within()

    assert within("1d12h") == timedelta(hours=36)
    assert within("90m") == timedelta(minutes=90)  # m is minutes, as in the config
    assert within("1y") == timedelta(days=365)
    with pytest.raises(ValueError, match="keep_within"):
        within("soon")
