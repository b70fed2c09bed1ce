"""Changed-block tracking: turn HyperCore snapDiff byte intervals into block ranges.

snapDiff answers in byte intervals `[lower, upper)` (hypercore-api.md "Changed block
tracking"). The repository stores fixed-size blocks, so an interval must be widened
outward to whole blocks: a partly changed block is read whole. Anything that does not
fit the disk (negative, inverted, starting beyond capacity) means we no longer trust
the answer, and the caller falls back to a full read with the reason reported.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from hcbak.hypercore.intervals import PairArray

# Fallback reasons, reported per disk (run report, point DiskImage.cbt_reason).
REASON_INCREMENTAL = "snapDiff"
REASON_NO_BASE = "no base"
REASON_BASE_DELETED = "base snapshot deleted"
REASON_RESIZED = "disk resized"
REASON_SNAPDIFF_ERROR = "snapDiff error"
REASON_OUT_OF_RANGE = "snapDiff interval out of range"
REASON_FORCED_FULL = "--full"
REASON_BLOCK_SIZE = "block size changed"
REASON_NO_SERIAL = "no snapshot serial"
# Fallbacks nobody asked for and that cost a full read every time they happen: the run
# warns (exit 1) so an operator looks. A first run, --full or a resize are expected.
UNEXPECTED_FALLBACKS = frozenset({REASON_BASE_DELETED, REASON_SNAPDIFF_ERROR, REASON_OUT_OF_RANGE})

BlockRange = tuple[int, int]  # [first block, end block) on the block grid


class CbtOutOfRange(ValueError):
    """snapDiff returned an interval that cannot belong to this disk."""


@dataclass(frozen=True)
class ReadPlan:
    """Which blocks of one disk to read, and why (incremental or full with a reason)."""

    n_blocks: int
    ranges: Sequence[BlockRange]  # sorted, merged; a PairArray for an incremental
    incremental: bool
    reason: str
    changed_bytes: int = field(default=0)

    @property
    def blocks_to_read(self) -> int:
        return sum(end - start for start, end in self.ranges)

    def iter_blocks(self) -> Iterator[int]:
        for start, end in self.ranges:
            yield from range(start, end)


def n_blocks_for(capacity: int, block_size: int) -> int:
    """Blocks needed to cover `capacity` bytes (the last one may be partial)."""
    return -(-capacity // block_size)


def align_intervals(
    intervals: Iterable[tuple[int, int]], block_size: int, capacity: int
) -> PairArray:
    """Widen byte intervals to the block grid, clamp to the disk, merge and sort.

    Compact whatever the length of the change list: 16 bytes per range (a snapDiff
    of 1 M intervals must not cost hundreds of MiB, issue 21).

    Raises CbtOutOfRange when an interval is negative, inverted or starts at or beyond
    `capacity`. An `upper` past capacity is clamped: the cluster reports in its own
    allocation granularity, which may round the last interval up past a small disk's end.
    Empty intervals (lower == upper) change nothing.
    """
    if block_size <= 0:
        raise ValueError("block_size must be positive")
    raw = PairArray()
    for lower, upper in intervals:
        if lower < 0 or upper < lower or (lower >= capacity and upper > lower):
            raise CbtOutOfRange(f"interval [{lower}, {upper}) outside disk of {capacity} bytes")
        if upper == lower:
            continue
        upper = min(upper, capacity)
        raw.append(lower // block_size, -(-upper // block_size))
    return merge_ranges(raw)


def merge_ranges(ranges: Iterable[BlockRange]) -> PairArray:
    """Sort and merge overlapping or touching ranges.

    snapDiff answers in disk order, so the ranges usually come sorted and are merged
    in one pass into a compact array; only an unsorted list is sorted (as tuples)."""
    raw = ranges if isinstance(ranges, PairArray) else PairArray(ranges)
    ordered: Iterable[BlockRange] = raw
    if any(b < a for a, b in itertools.pairwise(raw)):
        ordered = sorted(raw)
    merged = PairArray()
    last_end = -1
    for start, end in ordered:
        if merged and start <= last_end:
            if end > last_end:
                merged.set_last_end(end)
                last_end = end
        else:
            merged.append(start, end)
            last_end = end
    return merged


def full_plan(capacity: int, block_size: int, reason: str) -> ReadPlan:
    """Read every block (holes are still skipped by the reader)."""
    n = n_blocks_for(capacity, block_size)
    return ReadPlan(n, [(0, n)] if n else [], False, reason, capacity)


def incremental_plan(
    intervals: Sequence[tuple[int, int]], capacity: int, block_size: int
) -> ReadPlan:
    """An incremental plan, or a full plan with REASON_OUT_OF_RANGE when snapDiff is off."""
    try:
        ranges = align_intervals(intervals, block_size, capacity)
    except CbtOutOfRange:
        return full_plan(capacity, block_size, REASON_OUT_OF_RANGE)
    changed = sum(
        end - start
        for start, end in merge_ranges((lo, min(up, capacity)) for lo, up in intervals if up > lo)
    )
    n = n_blocks_for(capacity, block_size)
    return ReadPlan(n, ranges, True, REASON_INCREMENTAL, changed)


def with_blocks(plan: ReadPlan, blocks: Iterable[int]) -> ReadPlan:
    """The plan, also reading `blocks` (e.g. unchanged blocks whose stored copy was set
    aside as damaged: reading them again lets the backup store a healthy copy)."""
    extra = [(b, b + 1) for b in blocks if 0 <= b < plan.n_blocks]
    if not extra:
        return plan
    ranges = merge_ranges(itertools.chain(plan.ranges, extra))
    return ReadPlan(plan.n_blocks, ranges, plan.incremental, plan.reason, plan.changed_bytes)
