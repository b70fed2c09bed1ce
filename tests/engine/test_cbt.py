"""snapDiff intervals -> block ranges: every changed byte covered, nothing outside the disk."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hcbak.engine import cbt

BLOCK_SIZES = st.sampled_from([512, 4096, 65536, 1 << 20])


@st.composite
def disk_and_intervals(draw: st.DrawFn) -> tuple[int, int, list[tuple[int, int]]]:
    block_size = draw(BLOCK_SIZES)
    capacity = draw(st.integers(1, 40 * block_size))
    intervals = []
    for _ in range(draw(st.integers(0, 12))):
        lower = draw(st.integers(0, capacity - 1))
        upper = draw(st.integers(lower, capacity + block_size))  # may overshoot: clamped
        intervals.append((lower, upper))
    return block_size, capacity, intervals


@given(disk_and_intervals())
def test_every_changed_byte_is_inside_an_aligned_block_range(
    case: tuple[int, int, list[tuple[int, int]]],
) -> None:
    block_size, capacity, intervals = case
    ranges = cbt.align_intervals(intervals, block_size, capacity)
    for lower, upper in intervals:
        for byte in {lower, min(upper, capacity) - 1} if upper > lower else set():
            block = byte // block_size
            assert any(s <= block < e for s, e in ranges), (byte, ranges)


@given(disk_and_intervals())
def test_aligned_ranges_stay_on_the_disk_sorted_and_disjoint(
    case: tuple[int, int, list[tuple[int, int]]],
) -> None:
    block_size, capacity, intervals = case
    ranges = cbt.align_intervals(intervals, block_size, capacity)
    n = cbt.n_blocks_for(capacity, block_size)
    for s, e in ranges:
        assert 0 <= s < e <= n
    for (_, end), (start, _) in itertools.pairwise(ranges):
        assert end < start  # touching ranges are merged


@given(disk_and_intervals())
def test_no_block_is_read_that_no_interval_touches(
    case: tuple[int, int, list[tuple[int, int]]],
) -> None:
    block_size, capacity, intervals = case
    ranges = cbt.align_intervals(intervals, block_size, capacity)
    touched = set()
    for lower, upper in intervals:
        if upper > lower:
            touched.update(range(lower // block_size, -(-min(upper, capacity) // block_size)))
    planned = {b for s, e in ranges for b in range(s, e)}
    assert planned == touched


@pytest.mark.parametrize("interval", [(-1, 10), (10, 5), (4096, 4097), (5000, 6000)], ids=str)
def test_out_of_range_interval_falls_back_to_full_read_with_reason(
    interval: tuple[int, int],
) -> None:
    plan = cbt.incremental_plan([interval], capacity=4096, block_size=512)
    assert not plan.incremental
    assert plan.reason == cbt.REASON_OUT_OF_RANGE
    assert plan.ranges == [(0, 8)]


def test_empty_interval_changes_nothing_and_counts_no_bytes() -> None:
    plan = cbt.incremental_plan([(100, 100)], capacity=4096, block_size=512)
    assert plan.incremental and plan.ranges == [] and plan.changed_bytes == 0


def test_incremental_plan_counts_changed_bytes_once_for_overlaps() -> None:
    plan = cbt.incremental_plan([(0, 100), (50, 150), (1000, 1001)], 4096, 512)
    assert plan.changed_bytes == 151
    assert plan.ranges == [(0, 2)]  # blocks 0 and 1 touch: one merged range
    assert plan.blocks_to_read == 2


def test_full_plan_covers_a_partial_last_block() -> None:
    plan = cbt.full_plan(capacity=1000, block_size=512, reason=cbt.REASON_NO_BASE)
    assert plan.ranges == [(0, 2)] and plan.reason == "no base" and not plan.incremental


@given(
    st.lists(st.tuples(st.integers(0, 63), st.integers(1, 8)), max_size=6),
    st.lists(st.integers(-3, 70), max_size=10),
)
def test_a_plan_with_extra_blocks_reads_exactly_the_old_and_the_new_blocks(
    spans: list[tuple[int, int]], extra: list[int]
) -> None:
    plan = cbt.incremental_plan([(a * 4096, (a + n) * 4096) for a, n in spans], 64 * 4096, 4096)
    grown = cbt.with_blocks(plan, extra)
    assert set(grown.iter_blocks()) == set(plan.iter_blocks()) | {b for b in extra if 0 <= b < 64}
    assert grown.ranges == cbt.merge_ranges(grown.ranges)  # sorted, disjoint, merged
    assert (grown.incremental, grown.reason, grown.n_blocks) == (True, "snapDiff", 64)


def test_a_million_scale_change_list_aligns_into_16_bytes_a_range() -> None:
    """The block ranges of 100 000 scattered intervals are held in an array (16 bytes
    a range), not as a tuple per range (~130 bytes): a snapDiff of 1 M intervals
    must not cost hundreds of MiB (issue 21, benchmarks/sparse.py)."""
    import gc
    import sys

    n, stride = 100_000, 1 << 22
    intervals = [(i * stride, i * stride + 4096) for i in range(n)]
    plan = cbt.incremental_plan(intervals, n * stride, 1 << 20)
    assert len(plan.ranges) == n and plan.ranges[3] == (12, 13)
    seen, todo, held = set(), [plan.ranges], 0  # bytes of the ranges and all they hold
    while todo:
        o = todo.pop()
        if id(o) not in seen and not isinstance(o, type):
            seen.add(id(o))
            held += sys.getsizeof(o)
            todo.extend(gc.get_referents(o))
    assert held / n < 24, f"{held / n:.0f} bytes per range"
