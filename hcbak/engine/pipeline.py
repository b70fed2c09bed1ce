"""The per-disk data pipeline: read -> zero check -> hash -> dedup -> store.

A few threads pull block numbers from one shared iterator and each carries its block
through every stage. Memory in flight is therefore bounded by `threads x block_size`
whatever the disk size (no queues that can grow), and the stages that matter release
the GIL: os.pread, xxh3 hashing and lz4/zstd/AES inside Repository.put_block. Blocks
that lie entirely in a hole of the device (SEEK_DATA/SEEK_HOLE) are never read.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hcbak.engine.cbt import BlockRange, ReadPlan, merge_ranges
from hcbak.engine.report import DiskReport, Timings
from hcbak.errors import Interrupted
from hcbak.hypercore.intervals import PairArray
from hcbak.transport.reader import DiskReader, blocks_with_data

if TYPE_CHECKING:
    from hcbak.repo import BlockMap, Repository

ProgressFn = Callable[[int], None]  # bytes of the disk processed since the last call

DEFAULT_THREADS = 3
_PROGRESS_EVERY = 8  # blocks between progress callbacks per thread


@dataclass
class DiskResult:
    """What backing up one disk produced: the point's block map and the disk's report."""

    block_map: BlockMap
    report: DiskReport
    timings: Timings = field(default_factory=Timings)


def back_up_disk(
    reader: DiskReader,
    repo: Repository,
    plan: ReadPlan,
    previous_map: BlockMap | None,
    report: DiskReport,
    *,
    block_size: int,
    threads: int = DEFAULT_THREADS,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> DiskResult:
    """Read the blocks the plan names and return the new block map of the disk.

    The new map starts as the previous point's map (unchanged blocks keep their ids:
    every point is a synthetic full) or all-zero for a full read.
    """
    from hcbak.repo import ZERO_BLOCK, BlockMap

    n = plan.n_blocks
    if previous_map is not None and len(previous_map) == n and plan.incremental:
        new_map = previous_map.copy()
    else:
        new_map = BlockMap(n)
    to_read, holes = _split_by_holes(reader, plan, block_size)
    for start, end in holes:  # changed (or never written) and a hole now: all zeros
        new_map.clear(start, end)
    state = _State(
        repo=repo,
        reader=reader,
        block_size=block_size,
        new_map=new_map,
        previous_map=previous_map if previous_map is not None and len(previous_map) == n else None,
        blocks=_blocks_of(to_read),
        progress=progress,
        cancel=cancel or threading.Event(),
        zero_block=ZERO_BLOCK,
        last=n - 1,
    )
    state.count_holes(holes)
    if progress and holes:
        progress(_count(holes) * block_size)
    workers = [
        threading.Thread(target=state.work, name=f"hcbak-read-{k}", daemon=True)
        for k in range(max(1, min(threads, _count(to_read))))
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if state.error is not None:
        raise state.error
    if state.cancel.is_set():
        raise Interrupted("backup cancelled")
    state.fill(report, plan)
    return DiskResult(new_map, report, state.timings)


def _split_by_holes(
    reader: DiskReader, plan: ReadPlan, block_size: int
) -> tuple[Sequence[BlockRange], Sequence[BlockRange]]:
    """Block ranges to read, and block ranges of the plan lying wholly in holes (not
    read): ranges, so a sparse 2 TiB disk costs a few dozen pairs, not 8 bytes per
    block of the disk (issue 21)."""
    ranges = reader.data_ranges((a * block_size, b * block_size) for a, b in plan.ranges)
    if ranges is None:
        return plan.ranges, PairArray()
    return split_by_data(plan.ranges, merge_ranges(blocks_with_data(ranges, block_size)))


def split_by_data(
    plan: Iterable[BlockRange], data: Sequence[BlockRange]
) -> tuple[PairArray, PairArray]:
    """The parts of the plan's block ranges that touch data, and the parts in holes.

    Both inputs sorted and merged; one merge walk, the outputs sorted too."""
    inside, outside = PairArray(), PairArray()
    k = 0
    for start, end in plan:
        while k < len(data) and data[k][1] <= start:
            k += 1
        pos = start
        while pos < end:
            if k < len(data) and data[k][0] < end:
                d_start, d_end = data[k]  # d_end > pos: ranges before pos were passed
                if d_start > pos:
                    outside.append(pos, d_start)
                    pos = d_start
                stop = min(d_end, end)
                inside.append(pos, stop)
                pos = stop
                if d_end <= end:
                    k += 1
            else:
                outside.append(pos, end)
                pos = end
    return inside, outside


def _blocks_of(ranges: Iterable[BlockRange]) -> Iterator[int]:
    for start, end in ranges:
        yield from range(start, end)


def _count(ranges: Iterable[BlockRange]) -> int:
    return sum(end - start for start, end in ranges)


class _State:
    """Shared between the worker threads of one disk; counters under one lock."""

    def __init__(
        self,
        *,
        repo: Repository,
        reader: DiskReader,
        block_size: int,
        new_map: BlockMap,
        previous_map: BlockMap | None,
        blocks: Iterator[int],
        progress: ProgressFn | None,
        cancel: threading.Event,
        zero_block: bytes,
        last: int,
    ) -> None:
        self.repo = repo
        self.reader = reader
        self.block_size = block_size
        self.new_map = new_map
        self.previous_map = previous_map
        self.blocks = blocks
        self.progress = progress
        self.cancel = cancel
        self.zero_block = zero_block
        self.zero_data = bytes(block_size)
        self.lock = threading.Lock()
        self.error: BaseException | None = None
        self.timings = Timings()
        self.read = self.zero = self.changed = self.new = 0
        self.bytes_stored = 0
        # How the disk's last block (possibly partial: an NVRAM disk is 528 KiB) was
        # counted, so byte counters count only the bytes the disk has.
        self.last = last
        self.last_counted: set[str] = set()

    def count_holes(self, holes: Sequence[BlockRange]) -> None:
        self.zero += _count(holes)
        if self.previous_map is not None:
            previous, zero = self.previous_map, self.zero_block
            self.changed += sum(previous.count_stored(a, b) for a, b in holes)
            if holes and holes[-1][1] - 1 == self.last and previous.get(self.last) != zero:
                self.last_counted.add("changed")

    def _next(self) -> int | None:
        with self.lock:
            if self.cancel.is_set() or self.error is not None:
                return None
            return next(self.blocks, None)

    def work(self) -> None:
        t = Timings()
        read = zero = changed = new = stored = pending = 0
        bs = self.block_size
        try:
            while (i := self._next()) is not None:
                t0 = time.perf_counter()
                data = self.reader.pread(i * bs, bs)
                t1 = time.perf_counter()
                read += 1
                if data == self.zero_data:
                    bid = self.zero_block
                    zero += 1
                    t2 = t1
                else:
                    bid = self.repo.block_id(data)
                    t2 = time.perf_counter()
                    if not self.repo.has_block(bid):
                        added = self.repo.put_block(bid, data)
                        if added:
                            new += 1
                            stored += added
                            if i == self.last:
                                self.last_counted.add("new")
                t3 = time.perf_counter()
                t.source_read += t1 - t0
                t.hashing += t2 - t1
                t.store += t3 - t2
                if self.previous_map is None or self.previous_map.get(i) != bid:
                    changed += 1
                    if i == self.last:
                        self.last_counted.add("changed")
                if i == self.last:
                    self.last_counted.add("read")
                self.new_map.set(i, bid)
                pending += 1
                if self.progress and pending >= _PROGRESS_EVERY:
                    self.progress(pending * bs)
                    pending = 0
        except BaseException as exc:
            # Only this disk stops (its other threads see self.error); the run-wide cancel
            # event belongs to Ctrl-C/SIGTERM and must not end the other VMs' backups.
            with self.lock:
                if self.error is None:
                    self.error = exc
        finally:
            if self.progress and pending:
                self.progress(pending * bs)
            with self.lock:
                self.timings.add(t)
                self.read += read
                self.zero += zero
                self.changed += changed
                self.new += new
                self.bytes_stored += stored

    def fill(self, report: DiskReport, plan: ReadPlan) -> None:
        bs = self.block_size
        report.blocks_total = plan.n_blocks
        report.blocks_read = self.read
        report.blocks_zero = self.zero
        report.blocks_changed = self.changed
        report.blocks_new = self.new
        short = max(0, plan.n_blocks * bs - report.capacity)  # bytes past the disk's end
        report.bytes_read = self.read * bs - short * ("read" in self.last_counted)
        report.bytes_changed = self.changed * bs - short * ("changed" in self.last_counted)
        report.bytes_new = self.new * bs - short * ("new" in self.last_counted)
        report.bytes_stored = self.bytes_stored
        report.cbt_used = plan.incremental
        report.cbt_reason = plan.reason
