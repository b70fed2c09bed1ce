"""The sorted-run format of the index cache (hcbak/repo/index_runs.py), on bytes:
lookups and merges against a plain model, and damage detection."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hcbak.repo.index_runs import (
    ENTRY,
    Run,
    RunDamagedError,
    RunWriter,
    check_digest,
    merge,
    merged_packs,
)

# Few distinct first bytes, so equal 8-byte prefixes and duplicate ids (two copies of
# a block) cross chunk boundaries often.
ids = st.builds(
    lambda head, tail: bytes([head]) * 8 + tail,
    st.integers(0, 3),
    st.binary(min_size=8, max_size=8),
)
entries = st.lists(
    st.tuples(ids, st.integers(0, 3), st.integers(0, 2**32 - 1), st.integers(1, 2**32 - 1)),
    max_size=300,
)
packs = st.lists(st.binary(min_size=32, max_size=32), min_size=4, max_size=4, unique=True)


def write_run(records: list[tuple[bytes, int, int, int]], table: list[bytes], chunk: int) -> bytes:
    out = io.BytesIO()
    writer = RunWriter(out, table, len(records), chunk)
    ordered = sorted(records)
    for i in range(0, len(ordered), 7):  # pieces of any size
        writer.write(b"".join(ENTRY.pack(*e) for e in ordered[i : i + 7]))
    writer.finish()
    return out.getvalue()


def open_run(data: bytes) -> Run:
    def read(offset: int, length: int) -> bytes:
        return data[offset : offset + length]

    check_digest(read, len(data))
    return Run(read, len(data))


def model(records: list[tuple[bytes, int, int, int]]) -> dict[bytes, list[tuple[int, int, int]]]:
    out: dict[bytes, list[tuple[int, int, int]]] = {}
    for block_id, p, o, n in sorted(records):
        out.setdefault(block_id, []).append((p, o, n))
    return out


@settings(max_examples=100, deadline=None)
@given(entries, packs, st.integers(1, 9), st.lists(ids, max_size=20))
def test_find_returns_every_copy_and_nothing_else(records, table, chunk, absent):
    run = open_run(write_run(records, table, chunk))
    want = model(records)
    assert run.n == len(records)
    for block_id in list(want) + absent:
        assert sorted(run.find(block_id)) == sorted(want.get(block_id, []))
    assert list(run.entries()) == sorted(records)


@settings(max_examples=100, deadline=None)
@given(entries, entries, packs, packs, st.integers(1, 9))
def test_merge_is_the_sorted_union_with_packs_renumbered(older, newer, t_old, t_new, chunk):
    a, b = open_run(write_run(older, t_old, chunk)), open_run(write_run(newer, t_new, chunk))
    table, renumber = merged_packs(a.packs_raw(), b.packs_raw())
    out = io.BytesIO()
    writer = RunWriter(out, table, a.n + b.n, chunk)
    merge(writer, a.pieces(3), b.pieces(5), renumber)
    writer.finish()
    merged = open_run(out.getvalue())

    def named(run: Run, records: list[tuple[bytes, int, int, int]]) -> list[tuple]:
        return [(i, run.pack_raw(p), o, n) for i, p, o, n in records]

    got = named(merged, list(merged.entries()))
    assert [e[0] for e in got] == sorted(e[0] for e in got)
    assert sorted(got) == sorted(named(a, older) + named(b, newer))
    assert len(set(table)) == len(table)
    for block_id in {e[0] for e in older + newer}:  # the older copies come first
        found = [(merged.pack_raw(p), o, n) for p, o, n in merged.find(block_id)]
        olds = sorted((t_old[p], o, n) for i, p, o, n in older if i == block_id)
        assert sorted(found[: len(olds)]) == olds


@settings(max_examples=60, deadline=None)
@given(entries, packs, st.data())
def test_any_changed_byte_is_detected(records, table, data):
    raw = bytearray(write_run(records, table, 4))
    at = data.draw(st.integers(0, len(raw) - 1))
    raw[at] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises(RunDamagedError):
        open_run(bytes(raw))


def test_truncated_runs_and_miscounted_writes_are_refused() -> None:
    good = write_run([(bytes(16), 0, 1, 2)], [bytes(32)], 4)
    for cut in (1, 17, len(good) - 1):
        with pytest.raises(RunDamagedError):
            open_run(good[:-cut])
    writer = RunWriter(io.BytesIO(), [bytes(32)], 2)
    writer.write(ENTRY.pack(b"\x01" * 16, 0, 0, 1))
    with pytest.raises(ValueError):
        writer.finish()


@settings(max_examples=80, deadline=None)
@given(
    st.lists(entries, min_size=1, max_size=3),
    entries,
    packs,
    st.data(),
    st.booleans(),
)
def test_cached_index_agrees_with_a_model(runs_records, delta_records, table, data, in_memory):
    """CachedIndex (hcbak/repo/index_cache.py): lookup takes the in-process table first,
    then the runs oldest first, skipping damaged copies; items() gives every id once
    with lookup's answer, in id order, by either merge path."""
    from hcbak.repo import index_cache
    from hcbak.repo.index import SegmentEntry

    # ZERO_BLOCK is never stored: it is the in-memory table's free slot marker.
    runs_records = [[e for e in r if e[0] != bytes(16)] for r in runs_records]
    runs = [index_cache._OpenRun("r", None, open_run(write_run(r, table, 3))) for r in runs_records]
    every = [e for r in runs_records for e in r]
    skip = set(data.draw(st.lists(st.sampled_from(every), max_size=5))) if every else set()
    skip = {(i, table[p].hex()) for i, p, _o, _n in skip}
    index = index_cache.CachedIndex(runs, skip)
    delta = {}
    for i, p, o, n in delta_records:
        if i != bytes(16):  # ZERO_BLOCK is never stored (the in-memory table's free slot)
            delta[i] = (table[p].hex(), o, n)
    index.add([SegmentEntry(i, pk, o, n, 0) for i, (pk, o, n) in delta.items()])

    def expected(block_id):
        if block_id in delta:
            return delta[block_id]
        for records in runs_records:
            for i, p, o, n in sorted(records):
                if i == block_id and (i, table[p].hex()) not in skip:
                    return (table[p].hex(), o, n)
        return None

    ids = sorted({e[0] for e in every} | set(delta))
    want = [(i, expected(i)) for i in ids if expected(i) is not None]
    for i in ids:
        loc = index.lookup(i)
        assert (loc and (loc.pack, loc.offset, loc.length)) == (expected(i) or None)
    old = index_cache.ITEMS_IN_MEMORY
    index_cache.ITEMS_IN_MEMORY = 10**9 if in_memory else 0
    try:
        got = [(i, (loc.pack, loc.offset, loc.length)) for i, loc in index.items()]
    finally:
        index_cache.ITEMS_IN_MEMORY = old
    assert got == want
    assert index.packs() == sorted({w[1][0] for w in want})
    assert len(index) == len(want)


@pytest.mark.parametrize("in_memory", [True, False])
def test_items_give_the_copy_lookup_gives_when_a_run_holds_an_id_twice(in_memory) -> None:
    """The case hypothesis found: a newer run holds one id in two packs whose names sort
    the other way round than the run's own order of copies. items() and packs() follow
    the run's order (the copy lookup returns), also when the first copy is damaged."""
    from hcbak.repo import index_cache

    table = [bytes(31) + bytes([n]) for n in (3, 2, 0, 1)]
    x = b"\x01" * 8 + bytes(8)
    copies = [(x, 0, 0, 1), (x, 1, 0, 1), (x, 2, 5, 1)]  # in the run: ...03, ...02, ...00
    for skip in ({(x, table[0].hex())}, set()):
        runs = [
            index_cache._OpenRun("r", None, open_run(write_run(r, table, 3)))
            for r in ([(b"\x02" * 16, 3, 0, 1)], copies)
        ]
        index = index_cache.CachedIndex(runs, skip)
        first = index.lookup(x)
        assert first is not None and first.pack == table[1 if skip else 0].hex()
        old = index_cache.ITEMS_IN_MEMORY
        index_cache.ITEMS_IN_MEMORY = 10**9 if in_memory else 0
        try:
            assert dict(index.items())[x] == first
            assert first.pack in index.packs()
        finally:
            index_cache.ITEMS_IN_MEMORY = old
