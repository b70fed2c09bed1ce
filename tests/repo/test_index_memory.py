"""The in-memory index stays within its budget of 48 bytes per block."""

from __future__ import annotations

import hashlib
import tracemalloc

from hcbak.repo.index import SEG_ENTRY, CompactIndex, SegmentEntry

N = 30_000
BUDGET = 48
PACK = hashlib.sha256(b"pack").hexdigest()


def block_id(i: int) -> bytes:
    return hashlib.md5(str(i).encode()).digest()


def raw_segment(start: int, n: int) -> bytes:
    return b"".join(
        SEG_ENTRY.pack(block_id(i), 0, i * 7, 1000, 4096) for i in range(start, start + n)
    )


def test_loaded_index_costs_at_most_48_bytes_per_block_measured_with_tracemalloc() -> None:
    segments = [raw_segment(s, 1_000) for s in range(0, N, 1_000)]
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        index = CompactIndex()
        index.reserve(N)  # as Repository.reload_index does
        for raw in segments:
            index.add_segment([PACK], raw)
        used = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    print(f"index memory: {used / N:.1f} bytes per block")
    assert used / N <= BUDGET
    assert len(index) == N
    for i in range(0, N, 997):
        loc = index.lookup(block_id(i))
        assert loc is not None and loc.offset == i * 7 and loc.pack == PACK
    assert index.lookup(b"\xff" * 16) is None


def test_index_grown_by_additions_stays_within_budget() -> None:
    index = CompactIndex()
    for start in range(0, N, 500):
        index.add(SegmentEntry(block_id(i), PACK, i, 1, 1) for i in range(start, start + 500))
    assert len(index) == N
    assert len(index._slots) / N <= BUDGET
    assert all(index.contains(block_id(i)) for i in range(0, N, 101))


def test_duplicate_ids_keep_their_first_location() -> None:
    index = CompactIndex()
    first = [SegmentEntry(block_id(i), PACK, i, 1, 1) for i in range(10)]
    index.add(first)
    index.add([SegmentEntry(e.id, "f" * 64, 99, 2, 3) for e in first])
    assert len(index) == 10
    assert index.lookup(first[3].id) == index.lookup(first[3].id)
    loc = index.lookup(first[3].id)
    assert loc is not None and loc.pack == PACK and loc.offset == 3
