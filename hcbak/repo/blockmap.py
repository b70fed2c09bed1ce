"""Block maps: the block id of each block of one disk image, 16 bytes per stored block.

A map is held in chunks of CHUNK_BLOCKS ids; a chunk that was never written (all
ZERO_BLOCK) is not held at all, so a sparse 2 TiB disk with 64 MiB of data costs a
few chunks, not the 32 MiB of a flat 16 bytes per block (issue 21). `copy()` shares
the chunks and each map copies a chunk only when it first writes to it
(copy-on-write): an incremental's "previous map, and the new map starting as a copy
of it" costs the chunks the incremental changes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator

ID_LEN = 16
# The block-map entry of an all-zero block; such blocks are never stored.
ZERO_BLOCK = bytes(ID_LEN)

CHUNK_SHIFT = 10
CHUNK_BLOCKS = 1 << CHUNK_SHIFT  # 1024 ids, 16 KiB a chunk
_MASK = CHUNK_BLOCKS - 1
_CHUNK_BYTES = CHUNK_BLOCKS * ID_LEN
_ZERO_CHUNK = bytes(_CHUNK_BYTES)


class BlockMap:
    """Map block index -> block id, memory growing with the blocks that hold data.

    A fresh map is all ZERO_BLOCK, i.e. a sparse, all-zero disk. Invariant: ids past
    the map's length inside its last chunk are zero (so growing needs no write).
    Several threads may `set` different blocks at once (the backup pipeline does).
    """

    __slots__ = ("_chunks", "_lock", "_n", "_owned")

    def __init__(self, n_blocks: int) -> None:
        if n_blocks < 0:
            raise ValueError("a block map cannot have a negative length")
        self._n = n_blocks
        self._chunks: dict[int, bytearray] = {}
        # chunks this map alone holds (may write in place); the others are shared
        # with a copy and copied before the first write
        self._owned: set[int] = set()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._n

    def get(self, i: int) -> bytes:
        if not 0 <= i < self._n:
            raise IndexError(i)
        chunk = self._chunks.get(i >> CHUNK_SHIFT)
        if chunk is None:
            return ZERO_BLOCK
        at = (i & _MASK) * ID_LEN
        return bytes(chunk[at : at + ID_LEN])

    def set(self, i: int, block_id: bytes) -> None:
        if not 0 <= i < self._n:
            raise IndexError(i)
        if len(block_id) != ID_LEN:
            raise ValueError("block ids are 16 bytes")
        c = i >> CHUNK_SHIFT
        chunk = self._chunks.get(c) if c in self._owned else None
        if chunk is None:
            if c not in self._chunks and block_id == ZERO_BLOCK:
                return  # already zero; keep the chunk unheld
            chunk = self._own(c)
        at = (i & _MASK) * ID_LEN
        chunk[at : at + ID_LEN] = block_id

    def _own(self, c: int) -> bytearray:
        """Chunk c, writable by this map alone: created zero, or copied if shared."""
        with self._lock:
            if c in self._owned:  # another thread got here first
                return self._chunks[c]
            old = self._chunks.get(c)
            chunk = bytearray(old) if old is not None else bytearray(_CHUNK_BYTES)
            self._chunks[c] = chunk
            self._owned.add(c)
            return chunk

    def set_run(self, start: int, ids: bytes | memoryview) -> None:
        """Set the ids of blocks start, start+1, ... from consecutive 16-byte ids."""
        if len(ids) % ID_LEN:
            raise ValueError("block map length is not a multiple of 16")
        count = len(ids) // ID_LEN
        if start < 0 or start + count > self._n:
            raise IndexError(start + count)
        view = memoryview(ids)
        done = 0
        while done < count:
            i = start + done
            c, off = i >> CHUNK_SHIFT, i & _MASK
            take = min(count - done, CHUNK_BLOCKS - off)
            piece = view[done * ID_LEN : (done + take) * ID_LEN]
            if c in self._chunks or piece != _ZERO_CHUNK[: take * ID_LEN]:
                chunk = self._chunks[c] if c in self._owned else self._own(c)
                chunk[off * ID_LEN : (off + take) * ID_LEN] = piece
            done += take

    def clear(self, start: int, end: int) -> None:
        """Set blocks [start, end) to ZERO_BLOCK; whole chunks are dropped."""
        start, end = max(0, start), min(end, self._n)
        i = start
        while i < end:
            c, off = i >> CHUNK_SHIFT, i & _MASK
            take = min(end - i, CHUNK_BLOCKS - off)
            if c in self._chunks:
                if take == CHUNK_BLOCKS or (off == 0 and i + take == self._n):
                    with self._lock:
                        self._chunks.pop(c, None)
                        self._owned.discard(c)
                else:
                    chunk = self._chunks[c] if c in self._owned else self._own(c)
                    chunk[off * ID_LEN : (off + take) * ID_LEN] = _ZERO_CHUNK[: take * ID_LEN]
            i += take

    def to_bytes(self) -> bytes:
        """The whole map, 16 bytes per block (a version 1 manifest's maps section):
        as large as the disk's block count, so only for small maps and old formats."""
        n_chunks = -(-self._n // CHUNK_BLOCKS)
        out = b"".join(bytes(self._chunks.get(c, _ZERO_CHUNK)) for c in range(n_chunks))
        return out[: self._n * ID_LEN]

    @classmethod
    def from_bytes(cls, data: bytes | memoryview) -> BlockMap:
        if len(data) % ID_LEN:
            raise ValueError("block map length is not a multiple of 16")
        bm = cls(len(data) // ID_LEN)
        bm.set_run(0, data)
        return bm

    def copy(self) -> BlockMap:
        """An equal map sharing this one's chunks until either writes to one."""
        other = BlockMap(self._n)
        with self._lock:
            other._chunks = dict(self._chunks)
            self._owned.clear()  # shared now: the next write copies
        return other

    def resize(self, n_blocks: int) -> None:
        """Grow (zero blocks) or shrink, e.g. when a disk's capacity changed."""
        if n_blocks < 0:
            raise ValueError("a block map cannot have a negative length")
        if n_blocks < self._n:
            self.clear(n_blocks, self._n)  # keeps the invariant: past the end is zero
        self._n = n_blocks

    def _stored_chunks(self) -> Iterator[tuple[int, bytes]]:
        """(first block, the chunk's ids up to the map's end) of each held chunk."""
        for c in sorted(self._chunks):
            chunk = self._chunks.get(c)
            if chunk is None:
                continue
            first = c << CHUNK_SHIFT
            yield first, bytes(chunk[: min(CHUNK_BLOCKS, self._n - first) * ID_LEN])

    def runs(self) -> Iterator[tuple[int, bytes]]:
        """(first block, ids) of each maximal run of non-zero ids, in disk order:
        everything else is ZERO_BLOCK. What a version 2 manifest stores."""
        run_start = run_end = -1
        pieces: list[bytes] = []
        for first, data in self._stored_chunks():
            for a, b in _nonzero_spans(data):
                if pieces and first + a == run_end:
                    pieces.append(data[a * ID_LEN : b * ID_LEN])
                else:
                    if pieces:
                        yield run_start, b"".join(pieces)
                    run_start, pieces = first + a, [data[a * ID_LEN : b * ID_LEN]]
                run_end = first + b
        if pieces:
            yield run_start, b"".join(pieces)

    def stored(self) -> Iterator[tuple[int, bytes]]:
        """(index, id) of every non-zero block, in disk order."""
        for first, data in self._stored_chunks():
            for a, b in _nonzero_spans(data):
                for k in range(a, b):
                    yield first + k, data[k * ID_LEN : (k + 1) * ID_LEN]

    def ids(self) -> Iterator[bytes]:
        """Every non-zero block id, in disk order (duplicates included)."""
        for _i, block_id in self.stored():
            yield block_id

    def count_stored(self, start: int, end: int) -> int:
        """How many blocks of [start, end) are not ZERO_BLOCK (held chunks only)."""
        start, end = max(0, start), min(end, self._n)
        n = 0
        i = start
        while i < end:
            c, off = i >> CHUNK_SHIFT, i & _MASK
            take = min(end - i, CHUNK_BLOCKS - off)
            chunk = self._chunks.get(c)
            if chunk is not None:
                data = bytes(chunk[off * ID_LEN : (off + take) * ID_LEN])
                n += sum(b - a for a, b in _nonzero_spans(data))
            i += take
        return n

    def positions_of(self, wanted: Iterable[bytes]) -> list[int]:
        """Sorted indices of the blocks whose id is in `wanted` (a few ids: a search
        per id and held chunk runs in C, so a large map costs no Python loop)."""
        wanted = [b for b in set(wanted) if len(b) == ID_LEN and b != ZERO_BLOCK]
        found = set()
        for first, data in self._stored_chunks() if wanted else ():
            for block_id in wanted:
                at = data.find(block_id)
                while at >= 0:
                    if at % ID_LEN == 0:
                        found.add(first + at // ID_LEN)
                        at = data.find(block_id, at + ID_LEN)
                    else:  # a match across two ids: go on from the next byte
                        at = data.find(block_id, at + 1)
        return sorted(found)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BlockMap):
            return False
        if other._n != self._n:
            return False
        for c in set(self._chunks) | set(other._chunks):
            mine, theirs = self._chunks.get(c, _ZERO_CHUNK), other._chunks.get(c, _ZERO_CHUNK)
            if mine is not theirs and mine != theirs:
                return False
        return True

    def __hash__(self) -> int:
        held = (d for _c, d in self._stored_chunks() if d != _ZERO_CHUNK[: len(d)])
        return hash((self._n, *held))

    def __repr__(self) -> str:
        return f"BlockMap({self._n} blocks, {len(self._chunks)} chunks held)"


def _nonzero_spans(data: bytes) -> Iterator[tuple[int, int]]:
    """[a, b) id indexes of the runs of non-zero 16-byte ids in `data` (searches in C:
    a chunk full of ids is one find, a run of zero ids one strip)."""
    n = len(data) // ID_LEN
    k = 0
    while k < n:
        # the next zero id at or after k (aligned; a match across two ids is skipped)
        at = data.find(ZERO_BLOCK, k * ID_LEN)
        while at >= 0 and at % ID_LEN:
            at = data.find(ZERO_BLOCK, at + 1)
        z = n if at < 0 else at // ID_LEN
        if z > k:
            yield k, z
        if z >= n:
            return
        # zero bytes from id z on; the id holding the first non-zero byte ends the run
        tail = data[z * ID_LEN :]
        k = z + (len(tail) - len(tail.lstrip(b"\0"))) // ID_LEN
