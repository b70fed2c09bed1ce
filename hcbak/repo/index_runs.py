"""Sorted runs: the file format of the local index cache (docs/format.md, "Index cache").

A run is an immutable file of fixed-size entries sorted by block id, so a lookup reads
one small bucket of it instead of a table held in memory:

    header   RUN_HEAD: magic "HCBKRUN1", u32 chunk, u32 pack count, u64 entry count
    packs    pack count x 32 bytes: raw pack ids (an entry's pack number indexes these)
    entries  entry count x 28 bytes: id 16, pack u32, offset u32, length u32; by id
    radix    2^bits + 1 u32: for each value h of an id's first `bits` bits, the first
             chunk (of `chunk` entries) whose first id starts at h or later; bits =
             bit_length(entries // 64), so a bucket holds ~32-64 entries
    digest   16 bytes: xxh3-128 of everything before it

A lookup reads the radix slots of its id's bucket and then that bucket's entries (one
read of ~2 KiB) and finds the id in them with one bytes search in C. Only the radix
table (0.06-0.13 bytes per block) and the pack table are held in memory. Everything
here reads and writes through callables and file-like objects, so the logic is tested
on bytes (tests/repo/test_index_runs.py).
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

import xxhash

from hcbak.errors import IntegrityError

RUN_MAGIC = b"HCBKRUN1"
RUN_HEAD = struct.Struct("<8sIIQ")
ENTRY = struct.Struct("<16sIII")  # id, pack number, offset, length: 28 bytes
PACK_ID_LEN = 32
DIGEST_LEN = 16
CHUNK = 16  # radix granularity: a lookup reads its bucket plus up to one chunk
BUCKET = 64  # target entries per radix bucket
_FLUSH = 1 << 20  # the writer emits in pieces of about this size
_READ = 4 << 20  # sequential reads (digest check, iteration) in pieces of about this size

Reader = Callable[[int, int], bytes]  # (offset, length) -> bytes


class RunDamagedError(IntegrityError):
    """A run file that fails its checks: the cache rebuilds it, never uses it."""


class Sink(Protocol):
    def write(self, data: bytes, /) -> int: ...


def radix_bits(n_entries: int) -> int:
    return min((n_entries // BUCKET).bit_length(), 32)


def run_size(n_packs: int, n_entries: int) -> int:
    radix = ((1 << radix_bits(n_entries)) + 1) * 4
    return RUN_HEAD.size + n_packs * PACK_ID_LEN + n_entries * ENTRY.size + radix + DIGEST_LEN


def radix_table(firsts: bytes, bits: int) -> array[int]:
    """The radix table from the first 4 bytes of every chunk's first id (sorted)."""
    shift = 32 - bits
    buckets = [int.from_bytes(firsts[i : i + 4], "big") >> shift for i in range(0, len(firsts), 4)]
    table = array("I", bytes(4 * ((1 << bits) + 1)))
    c, n = 0, len(buckets)
    for h in range(len(table)):
        while c < n and buckets[c] < h:
            c += 1
        table[h] = c
    return table


class RunWriter:
    """Write one run front to back, streaming: entries arrive sorted, in any pieces.

    The entry count and pack table go first, so the caller knows them up front (a merge
    adds its inputs' counts; a build counts its records). `finish` returns the digest.
    """

    def __init__(self, out: Sink, packs: list[bytes], n_entries: int, chunk: int = CHUNK):
        self._out = out
        self._hash = xxhash.xxh3_128()
        self._chunk = chunk
        self._n = n_entries
        self._written = 0
        self._pending = bytearray()
        self._firsts = bytearray()
        self._last = b""
        self._emit(RUN_HEAD.pack(RUN_MAGIC, chunk, len(packs), n_entries))
        self._emit(b"".join(packs))

    def _emit(self, data: bytes | bytearray | memoryview) -> None:
        self._out.write(bytes(data))
        self._hash.update(data)

    def write(self, records: bytes | bytearray | memoryview) -> None:
        """Whole entries, continuing the sorted order."""
        self._pending += records
        if len(self._pending) >= _FLUSH:
            self._drain()

    def _drain(self) -> None:
        buf = self._pending
        n = len(buf) // ENTRY.size
        if len(buf) != n * ENTRY.size:
            raise ValueError("a run holds whole entries")
        if n == 0:
            return
        chunk = self._chunk
        first = -(-self._written // chunk) * chunk
        for k in range(first, self._written + n, chunk):
            j = (k - self._written) * ENTRY.size
            self._firsts += buf[j : j + 4]
        if buf[:16] < self._last:
            raise ValueError("run entries out of order")
        self._last = bytes(buf[(n - 1) * ENTRY.size : (n - 1) * ENTRY.size + 16])
        self._emit(buf)
        self._written += n
        self._pending = bytearray()

    def finish(self) -> bytes:
        self._drain()
        if self._written != self._n:
            raise ValueError(f"run announced {self._n} entries, got {self._written}")
        table = radix_table(bytes(self._firsts), radix_bits(self._n))
        if sys.byteorder != "little":
            table.byteswap()
        self._emit(table.tobytes())
        digest = self._hash.digest()
        self._out.write(digest)
        return digest


def check_digest(read: Reader, size: int) -> bytes:
    """The run's digest once every byte before it matches; else RunDamagedError."""
    if size < RUN_HEAD.size + DIGEST_LEN:
        raise RunDamagedError("index cache run is truncated")
    h = xxhash.xxh3_128()
    pos, end = 0, size - DIGEST_LEN
    while pos < end:
        piece = read(pos, min(_READ, end - pos))
        if not piece:
            raise RunDamagedError("index cache run is truncated")
        h.update(piece)
        pos += len(piece)
    digest = read(end, DIGEST_LEN)
    if h.digest() != digest:
        raise RunDamagedError("index cache run does not match its checksum")
    return digest


class Run:
    """A readable run: the fence and pack table in memory, entries read on demand.

    The caller checks the digest first (`check_digest`); this checks the layout."""

    def __init__(self, read: Reader, size: int) -> None:
        self._read = read
        try:
            magic, chunk, n_packs, n = RUN_HEAD.unpack(read(0, RUN_HEAD.size))
        except struct.error:
            raise RunDamagedError("index cache run is truncated")
        if magic != RUN_MAGIC or chunk < 1 or size != run_size(n_packs, n):
            raise RunDamagedError("index cache run has a bad header")
        self.chunk, self.n = chunk, n
        self._packs_raw = read(RUN_HEAD.size, n_packs * PACK_ID_LEN)
        self.n_packs = n_packs
        self._base = RUN_HEAD.size + n_packs * PACK_ID_LEN
        radix_off = self._base + n * ENTRY.size
        self.radix = array("I", read(radix_off, size - DIGEST_LEN - radix_off))
        if sys.byteorder != "little":
            self.radix.byteswap()
        self._shift = 32 - radix_bits(n)
        self._names: list[str] | None = None

    def pack_raw(self, number: int) -> bytes:
        if number >= self.n_packs:
            raise RunDamagedError("index cache entry names no pack")
        return self._packs_raw[number * PACK_ID_LEN : (number + 1) * PACK_ID_LEN]

    def packs_raw(self) -> list[bytes]:
        return [self.pack_raw(i) for i in range(self.n_packs)]

    def pack_name(self, number: int) -> str:
        if self._names is None:
            self._names = [p.hex() for p in self.packs_raw()]
        if number >= self.n_packs:
            raise RunDamagedError("index cache entry names no pack")
        return self._names[number]

    def find(self, block_id: bytes) -> list[tuple[int, int, int]]:
        """(pack number, offset, length) of every entry for block_id (usually 0 or 1)."""
        h = int.from_bytes(block_id[:4], "big") >> self._shift
        size, chunk = ENTRY.size, self.chunk
        lo = max(self.radix[h] - 1, 0) * chunk  # the chunk before may hold its first ids
        hi = min(self.radix[h + 1] * chunk, self.n)
        if lo >= hi:
            return []
        buf = self._read(self._base + lo * size, (hi - lo) * size)
        at = buf.find(block_id)
        while at > 0 and at % size:  # a match across two entries: look further
            at = buf.find(block_id, at + 1)
        out: list[tuple[int, int, int]] = []
        while 0 <= at < len(buf) and buf[at : at + 16] == block_id:
            _, p, o, n = ENTRY.unpack_from(buf, at)
            out.append((p, o, n))
            at += size
        return out

    def pieces(self, entries_per_piece: int = _READ // ENTRY.size) -> Iterator[bytes]:
        """The entries in order, in pieces of whole entries."""
        pos = 0
        while pos < self.n:
            k = min(entries_per_piece, self.n - pos)
            yield self._read(self._base + pos * ENTRY.size, k * ENTRY.size)
            pos += k

    def entries(self) -> Iterator[tuple[bytes, int, int, int]]:
        for piece in self.pieces():
            yield from ENTRY.iter_unpack(piece)


def upper_bound(buf: bytes, lo: int, hi: int, block_id: bytes) -> int:
    """First entry index in [lo, hi) of buf whose id is > block_id."""
    size = ENTRY.size
    while lo < hi:
        mid = (lo + hi) // 2
        if buf[mid * size : mid * size + 16] <= block_id:
            lo = mid + 1
        else:
            hi = mid
    return lo


def merged_packs(older: list[bytes], newer: list[bytes]) -> tuple[list[bytes], list[int]]:
    """The pack table of a merge (older's numbers kept) and newer's renumbering."""
    table = list(older)
    number = {p: i for i, p in enumerate(table)}
    mapping = []
    for p in newer:
        if p not in number:
            number[p] = len(table)
            table.append(p)
        mapping.append(number[p])
    return table, mapping


def merge(
    out: RunWriter, older: Iterable[bytes], newer: Iterable[bytes], renumber: list[int]
) -> None:
    """Write the merge of two sorted entry streams (pieces of whole entries).

    `older`'s bytes are copied as they are, in bulk; each `newer` entry is renumbered
    into the merged pack table and goes after the older entries with the same id. The
    cost in Python steps grows with the newer side only (plus a bulk copy).
    """
    size = ENTRY.size
    pieces = iter(older)
    buf = next(pieces, b"")
    pos, n = 0, len(buf) // size
    for newer_piece in newer:
        for block_id, p, o, ln in ENTRY.iter_unpack(newer_piece):
            while n:
                k = upper_bound(buf, pos, n, block_id)
                out.write(memoryview(buf)[pos * size : k * size])
                if k < n:
                    pos = k
                    break
                buf = next(pieces, b"")
                pos, n = 0, len(buf) // size
            out.write(ENTRY.pack(block_id, renumber[p], o, ln))
    if n:
        out.write(memoryview(buf)[pos * size :])
    for rest in pieces:
        out.write(rest)
