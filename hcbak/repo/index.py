"""Index segments on disk and the compact in-memory index built from them.

Budget: <= 48 bytes per block in memory (1 TiB of unique data at 1 MiB blocks is 1M
entries). A dict keyed by 16-byte ids costs 100+ bytes per entry, so the index is one
open-addressing hash table of 28-byte records in a bytearray (measured: ~36-44 bytes
per entry including free slots; tests/repo/test_index_memory.py). Loading presizes the
table from the decoded segments, so opening a repository never rehashes.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from hcbak.errors import IntegrityError
from hcbak.repo.codec import Envelope
from hcbak.repo.storage.base import ObjectStore

INDEX_MAGIC = b"HCBKIDX1"
INDEX_AD = b"hcbak-index-v1"
SEG_ENTRY = struct.Struct("<16sIIII")  # id, pack number (in this segment), offset, len, plain
_PACK_ID_LEN = 32  # raw sha256


@dataclass(frozen=True)
class Location:
    """Where a block's frame is: pack, offset and length."""

    pack: str
    offset: int
    length: int


@dataclass(frozen=True)
class SegmentEntry:
    """One index record: a block id, its place and its plain size."""

    id: bytes
    pack: str
    offset: int
    length: int
    plain_len: int


def encode_segment(entries: Iterable[SegmentEntry], envelope: Envelope) -> bytes:
    """Plaintext: pack count u32, raw pack ids, entry count u32, entries sorted by id."""
    ordered = sorted(entries, key=lambda e: e.id)
    packs = sorted({e.pack for e in ordered})
    pack_no = {p: n for n, p in enumerate(packs)}
    body = [struct.pack("<I", len(packs))]
    body += [bytes.fromhex(p) for p in packs]
    body.append(struct.pack("<I", len(ordered)))
    body += [
        SEG_ENTRY.pack(e.id, pack_no[e.pack], e.offset, e.length, e.plain_len) for e in ordered
    ]
    return INDEX_MAGIC + envelope.seal(b"".join(body), INDEX_AD)


def decode_segment(data: bytes, envelope: Envelope, name: str) -> list[SegmentEntry]:
    packs, records = decode_segment_raw(data, envelope, name)
    return [
        SegmentEntry(i, packs[p], o, ln, pl) for i, p, o, ln, pl in SEG_ENTRY.iter_unpack(records)
    ]


def decode_segment_raw(data: bytes, envelope: Envelope, name: str) -> tuple[list[str], bytes]:
    """(pack ids, raw SEG_ENTRY records) of one segment, checked for consistency."""
    what = f"index segment {name}"
    if data[:8] != INDEX_MAGIC:
        raise IntegrityError(f"{what} has a bad magic (truncated or not an index)")
    plain, end = envelope.open(data, 8, INDEX_AD, what)
    if end != len(data):
        raise IntegrityError(f"{what} has trailing garbage")
    try:
        (n_packs,) = struct.unpack_from("<I", plain, 0)
        pos = 4
        packs = [plain[pos + i * 32 : pos + (i + 1) * 32].hex() for i in range(n_packs)]
        pos += n_packs * _PACK_ID_LEN
        (n,) = struct.unpack_from("<I", plain, pos)
        pos += 4
        records = plain[pos : pos + n * SEG_ENTRY.size]
    except struct.error:
        raise IntegrityError(f"{what} is malformed")
    if len(records) != n * SEG_ENTRY.size or any(
        p >= len(packs) for p in (r[1] for r in SEG_ENTRY.iter_unpack(records))
    ):
        raise IntegrityError(f"{what} is malformed")
    return packs, records


def segment_key(seg_id: str) -> str:
    return f"index/{seg_id}"


def write_segment(store: ObjectStore, entries: list[SegmentEntry], envelope: Envelope) -> str:
    """Write one segment under its content hash (write-once); returns the segment id."""
    data = encode_segment(entries, envelope)
    seg_id = hashlib.sha256(data).hexdigest()
    store.put(segment_key(seg_id), data, if_absent=True)
    return seg_id


def list_segments(store: ObjectStore) -> list[str]:
    return [key.removeprefix("index/") for key in store.list("index/")]


def read_segment(store: ObjectStore, seg_id: str, envelope: Envelope) -> list[SegmentEntry]:
    return decode_segment(_checked(seg_id, read_segment_file(store, seg_id)), envelope, seg_id)


def read_segment_file(store: ObjectStore, seg_id: str) -> bytes:
    """A segment's bytes, unchecked (`decode_checked_segment` checks them);
    ObjectMissingError when it was deleted meanwhile."""
    return store.get(segment_key(seg_id))


def delete_segment(store: ObjectStore, seg_id: str) -> None:
    store.delete(segment_key(seg_id))


def decode_checked_segment(seg_id: str, data: bytes, envelope: Envelope) -> tuple[list[str], bytes]:
    """`decode_segment_raw` of a segment file's bytes, once they match its name."""
    return decode_segment_raw(_checked(seg_id, data), envelope, seg_id)


def _checked(seg_id: str, data: bytes) -> bytes:
    if hashlib.sha256(data).hexdigest() != seg_id:
        raise IntegrityError(f"index segment {seg_id} content does not match its name")
    return data


_SLOT = struct.Struct("<16sIII")  # id, pack number, offset, length: 28 bytes
_EMPTY = bytes(16)  # ZERO_BLOCK is never stored, so an all-zero id marks a free slot
MAX_LOAD = 0.8
GROWTH = 1.25


class CompactIndex:
    """id -> (pack, offset, length) in one open-addressing hash table in a bytearray.

    Ids are already uniform hashes, so their first 8 bytes pick the slot directly;
    collisions probe linearly. Slots are 28 bytes and the load factor stays between
    MAX_LOAD / GROWTH and MAX_LOAD (0.64..0.8): 35..44 bytes per entry. Callers that
    know the final size (`reserve`) avoid every resize. Not thread safe by itself.
    """

    def __init__(self, capacity: int = 1024) -> None:
        self._cap = capacity
        self._slots = bytearray(capacity * _SLOT.size)
        self._count = 0
        self._pack_names: list[str] = []
        self._pack_no: dict[str, int] = {}

    def __len__(self) -> int:
        return self._count

    def reserve(self, n: int) -> None:
        """Make room for n entries in total without further resizing."""
        need = int(n / MAX_LOAD) + 1
        if need > self._cap:
            self._resize(need)

    def _pack_number(self, pack: str) -> int:
        n = self._pack_no.get(pack)
        if n is None:
            n = len(self._pack_names)
            self._pack_names.append(pack)
            self._pack_no[pack] = n
        return n

    def _find(self, block_id: bytes) -> tuple[int, bool]:
        """(slot, found): the slot holding block_id, or the free slot it would take."""
        slots, size, cap = self._slots, _SLOT.size, self._cap
        i = int.from_bytes(block_id[:8], "little") % cap
        while True:
            key = slots[i * size : i * size + 16]
            if key == block_id:
                return i, True
            if key == _EMPTY:
                return i, False
            i = i + 1 if i + 1 < cap else 0

    def _insert(
        self, block_id: bytes, pack_no: int, offset: int, length: int, replace: bool = False
    ) -> None:
        if self._count + 1 > self._cap * MAX_LOAD:
            self._resize(int(self._cap * GROWTH) + 1)
        i, found = self._find(block_id)
        if not found or replace:  # a repeated id keeps its first location unless replaced
            _SLOT.pack_into(self._slots, i * _SLOT.size, block_id, pack_no, offset, length)
            self._count += not found

    def _resize(self, cap: int) -> None:
        old = self._slots
        self._cap, self._slots, self._count = cap, bytearray(cap * _SLOT.size), 0
        for block_id, p, o, n in _SLOT.iter_unpack(old):
            if block_id != _EMPTY:
                self._insert(block_id, p, o, n)

    def add(self, entries: Iterable[SegmentEntry], *, replace: bool = False) -> None:
        """Insert entries; with `replace` a new location wins over a known one (a
        healthy copy stored after the indexed one was found damaged)."""
        for e in entries:
            self._insert(e.id, self._pack_number(e.pack), e.offset, e.length, replace)

    def add_segment(
        self, packs: list[str], records: bytes, skip: set[tuple[bytes, str]] | None = None
    ) -> None:
        """Fast path for loading: raw SEG_ENTRY records of one decoded segment, less
        the (id, pack) copies in `skip` (recorded as damaged, hcbak/repo/damaged.py)."""
        numbers = [self._pack_number(p) for p in packs]
        self.reserve(self._count + len(records) // SEG_ENTRY.size)
        if skip:
            for block_id, p, o, n, _plain in SEG_ENTRY.iter_unpack(records):
                if (block_id, packs[p]) not in skip:
                    self._insert(block_id, numbers[p], o, n)
            return
        for block_id, p, o, n, _plain in SEG_ENTRY.iter_unpack(records):
            self._insert(block_id, numbers[p], o, n)

    def lookup(self, block_id: bytes) -> Location | None:
        i, found = self._find(block_id)
        if not found:
            return None
        _, p, o, n = _SLOT.unpack_from(self._slots, i * _SLOT.size)
        return Location(self._pack_names[p], o, n)

    def contains(self, block_id: bytes) -> bool:
        return self._find(block_id)[1]

    def items(self) -> Iterator[tuple[bytes, Location]]:
        names = self._pack_names
        for block_id, p, o, n in _SLOT.iter_unpack(self._slots):
            if block_id != _EMPTY:
                yield block_id, Location(names[p], o, n)

    def items_by_id(self) -> Iterator[tuple[bytes, Location]]:
        """`items` in id order (for a merge join). The table is in memory anyway: its
        slots are sorted here (~70 bytes per entry for the sort)."""
        names = self._pack_names
        size = _SLOT.size
        every = (self._slots[i : i + size] for i in range(0, len(self._slots), size))
        slots = sorted(s for s in every if s[:16] != _EMPTY)
        for slot in slots:
            block_id, p, o, n = _SLOT.unpack(slot)
            yield block_id, Location(names[p], o, n)

    def packs(self) -> list[str]:
        """Names of packs that hold at least one indexed blob."""
        used = {p for block_id, p, _, _ in _SLOT.iter_unpack(self._slots) if block_id != _EMPTY}
        return [self._pack_names[p] for p in sorted(used)]
