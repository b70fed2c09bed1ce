"""The sparse, copy-on-write block map against a plain list of ids (issue 21)."""

from __future__ import annotations

import sys
import threading

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from hcbak.repo.blockmap import CHUNK_BLOCKS, ZERO_BLOCK, BlockMap

# Ids chosen to trip a byte search: zeros at one end, so an id's tail and the next
# id's head can spell ZERO_BLOCK or another id across two entries.
IDS = [
    ZERO_BLOCK,
    b"\x01" + bytes(15),
    bytes(15) + b"\x01",
    bytes(8) + b"\x02" * 8,
    b"\x02" * 8 + bytes(8),
    b"\x03" * 16,
]
MAX_BLOCKS = 3 * CHUNK_BLOCKS + 5  # chunk boundaries and a partial last chunk

sizes = st.sampled_from([0, 1, 7, CHUNK_BLOCKS - 1, CHUNK_BLOCKS, CHUNK_BLOCKS + 1, MAX_BLOCKS])
ids = st.sampled_from(IDS)


def positions(n: int) -> st.SearchStrategy[int]:
    """Block indexes near chunk edges (where the bugs live) and anywhere."""
    edges = [k * CHUNK_BLOCKS + d for k in range(4) for d in (-1, 0, 1)]
    return st.one_of(st.sampled_from([e for e in edges if 0 <= e < n] or [0]), st.integers(0, n))


def model_runs(model: list[bytes]) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    for i, b in enumerate(model):
        if b == ZERO_BLOCK:
            continue
        if out and out[-1][0] + len(out[-1][1]) // 16 == i:
            out[-1] = (out[-1][0], out[-1][1] + b)
        else:
            out.append((i, b))
    return out


class MapVsList(RuleBasedStateMachine):
    """Maps and their copies, each checked against its own list after every step."""

    maps = Bundle("maps")

    def __init__(self) -> None:
        super().__init__()
        self.pairs: list[tuple[BlockMap, list[bytes]]] = []

    @rule(target=maps, n=sizes)
    def new(self, n: int) -> int:
        self.pairs.append((BlockMap(n), [ZERO_BLOCK] * n))
        return len(self.pairs) - 1

    @rule(target=maps, k=maps)
    def copy(self, k: int) -> int:
        bm, model = self.pairs[k]
        self.pairs.append((bm.copy(), list(model)))
        return len(self.pairs) - 1

    @rule(target=maps, k=maps)
    def from_bytes(self, k: int) -> int:
        bm, model = self.pairs[k]
        assert bm.to_bytes() == b"".join(model)
        self.pairs.append((BlockMap.from_bytes(bm.to_bytes()), list(model)))
        return len(self.pairs) - 1

    @rule(k=maps, data=st.data(), block_id=ids)
    def set(self, k: int, data: st.DataObject, block_id: bytes) -> None:
        bm, model = self.pairs[k]
        if not model:
            with pytest.raises(IndexError):
                bm.set(0, block_id)
            return
        i = data.draw(positions(len(model) - 1))
        bm.set(i, block_id)
        model[i] = block_id

    @rule(k=maps, data=st.data(), run=st.lists(ids, max_size=CHUNK_BLOCKS + 3))
    def set_run(self, k: int, data: st.DataObject, run: list[bytes]) -> None:
        bm, model = self.pairs[k]
        if len(run) > len(model):
            run = run[: len(model)]
        start = data.draw(st.integers(0, len(model) - len(run)))
        bm.set_run(start, b"".join(run))
        model[start : start + len(run)] = run

    @rule(k=maps, data=st.data())
    def clear(self, k: int, data: st.DataObject) -> None:
        bm, model = self.pairs[k]
        a = data.draw(positions(len(model)))
        b = data.draw(positions(len(model)).filter(lambda x: x >= a))
        bm.clear(a, b)
        model[a:b] = [ZERO_BLOCK] * (b - a)

    @rule(k=maps, n=sizes)
    def resize(self, k: int, n: int) -> None:
        bm, model = self.pairs[k]
        bm.resize(n)
        del model[n:]
        model.extend([ZERO_BLOCK] * (n - len(model)))

    @rule(k=maps, data=st.data())
    def queries(self, k: int, data: st.DataObject) -> None:
        bm, model = self.pairs[k]
        a = data.draw(positions(len(model)))
        b = data.draw(positions(len(model)).filter(lambda x: x >= a))
        assert bm.count_stored(a, b) == sum(1 for x in model[a:b] if x != ZERO_BLOCK)
        wanted = data.draw(st.sets(ids, max_size=3))
        want = [i for i, x in enumerate(model) if x in wanted and x != ZERO_BLOCK]
        assert bm.positions_of(wanted) == want

    @rule(k=maps, j=maps)
    def equality(self, k: int, j: int) -> None:
        (a, ma), (b, mb) = self.pairs[k], self.pairs[j]
        assert (a == b) == (ma == mb)
        if ma == mb:
            assert hash(a) == hash(b)

    @rule(k=maps, data=st.data())
    def get(self, k: int, data: st.DataObject) -> None:
        bm, model = self.pairs[k]
        i = data.draw(positions(len(model)))
        if i == len(model):
            with pytest.raises(IndexError):
                bm.get(i)
        else:
            assert bm.get(i) == model[i]

    @invariant()
    def every_map_reads_as_its_list(self) -> None:
        for bm, model in self.pairs:
            assert len(bm) == len(model)
            assert bm.to_bytes() == b"".join(model)
            assert list(bm.ids()) == [x for x in model if x != ZERO_BLOCK]
            assert list(bm.stored()) == [(i, x) for i, x in enumerate(model) if x != ZERO_BLOCK]
            assert list(bm.runs()) == model_runs(model)


TestMapVsList = MapVsList.TestCase
TestMapVsList.settings = settings(max_examples=150, stateful_step_count=16, deadline=None)


def test_a_sparse_map_holds_only_the_chunks_with_data() -> None:
    """2 TiB of 1 MiB blocks, 64 ids spread over it: 64 chunks, not 32 MiB."""
    n = 2 * 1024 * 1024
    bm = BlockMap(n)
    for k in range(64):
        bm.set(k * (n // 64), bytes([k + 1]) * 16)
    assert len(bm._chunks) == 64
    cp = bm.copy()
    assert all(cp._chunks[c] is bm._chunks[c] for c in bm._chunks)  # shared, not copied
    cp.set(5, b"\x09" * 16)  # the first write copies that one chunk only
    assert cp._chunks[0] is not bm._chunks[0] and bm.get(5) == ZERO_BLOCK
    assert sum(cp._chunks[c] is bm._chunks[c] for c in bm._chunks) == 63
    cp.clear(0, n)
    assert cp._chunks == {} and len(bm._chunks) == 64
    assert BlockMap.from_bytes(bytes(16 * CHUNK_BLOCKS * 3))._chunks == {}


def test_a_write_to_either_side_of_a_copy_stays_on_that_side() -> None:
    a = BlockMap(CHUNK_BLOCKS + 1)
    a.set(1, b"\x01" * 16)
    b = a.copy()
    a.set(2, b"\x02" * 16)  # the original writes after the copy: b keeps its view
    b.set(3, b"\x03" * 16)
    assert (a.get(2), a.get(3)) == (b"\x02" * 16, ZERO_BLOCK)
    assert (b.get(2), b.get(3)) == (ZERO_BLOCK, b"\x03" * 16)
    a.resize(2)  # shrinking then growing reads zeros, not what was past the end
    a.resize(CHUNK_BLOCKS + 1)
    assert a.get(2) == ZERO_BLOCK and b.get(1) == a.get(1) == b"\x01" * 16


def test_threads_setting_blocks_of_one_shared_chunk_lose_no_write() -> None:
    """The pipeline's workers set blocks of one map at once; the first write to a
    shared or absent chunk copies or creates it under a lock, so no write is lost.
    A tiny switch interval makes the threads interleave inside `set`."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(20):
            _four_threads_write_one_chunk()
    finally:
        sys.setswitchinterval(old)


def _four_threads_write_one_chunk() -> None:
    """Each thread writes its own block of every chunk: every chunk's first write
    (a copy of a shared one, or a new one) is a race of four threads."""
    n_chunks = 64
    base = BlockMap(n_chunks * CHUNK_BLOCKS)
    for c in range(0, n_chunks, 2):
        base.set(c * CHUNK_BLOCKS + 10, b"\x01" * 16)
    bm = base.copy()
    barrier = threading.Barrier(4)

    def write(t: int) -> None:
        barrier.wait()
        for c in range(n_chunks):
            bm.set(c * CHUNK_BLOCKS + t, bytes([t + 2]) * 16)

    threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for c in range(n_chunks):
        assert [bm.get(c * CHUNK_BLOCKS + t) for t in range(4)] == [
            bytes([t + 2]) * 16 for t in range(4)
        ]
        assert base.get(c * CHUNK_BLOCKS) == ZERO_BLOCK
