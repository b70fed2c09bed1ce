"""Index segments on disk and the compact in-memory index built from them.

Budget: <= 48 bytes per block in memory (1 TiB of unique data at 1 MiB blocks is 1M
entries). A dict keyed by 16-byte ids costs 100+ bytes per entry, so the index keeps
sorted runs of fixed-size records instead: ids in one bytearray (16 B), pack number,
offset and length in `array('I')`s (12 B) = 28 B per entry, looked up by binary search.
New runs are merged with runs of similar size (a binary-counter LSM), so adding N
entries costs O(N log N) in total and lookups search O(log N) runs.
"""

from __future__ import annotations

import hashlib
import heapq
import struct
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from hcbak.errors import IntegrityError
from hcbak.repo import fsio
from hcbak.repo.codec import Envelope

INDEX_MAGIC = b"HCBKIDX1"
INDEX_AD = b"hcbak-index-v1"
SEG_ENTRY = struct.Struct("<16sIIII")  # id, pack number (in this segment), offset, len, plain
_PACK_ID_LEN = 32  # raw sha256


@dataclass(frozen=True)
class Location:
    pack: str
    offset: int
    length: int


@dataclass(frozen=True)
class SegmentEntry:
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
        return [
            SegmentEntry(i, packs[p], o, ln, pl)
            for i, p, o, ln, pl in SEG_ENTRY.iter_unpack(plain[pos : pos + n * SEG_ENTRY.size])
        ]
    except (struct.error, IndexError):
        raise IntegrityError(f"{what} is malformed")


def write_segment(root: Path, entries: list[SegmentEntry], envelope: Envelope) -> str:
    """Write one segment under its content hash; returns the segment id."""
    data = encode_segment(entries, envelope)
    seg_id = hashlib.sha256(data).hexdigest()
    fsio.atomic_write(root / "index" / seg_id, data, write_once=True)
    return seg_id


def list_segments(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "index").iterdir() if not p.name.startswith("."))


def read_segment(root: Path, seg_id: str, envelope: Envelope) -> list[SegmentEntry]:
    data = fsio.read_file(root / "index" / seg_id, "index segment")
    if hashlib.sha256(data).hexdigest() != seg_id:
        raise IntegrityError(f"index segment {seg_id} content does not match its name")
    return decode_segment(data, envelope, seg_id)


class _Run:
    """One sorted run: ids packed in a bytearray plus parallel uint32 arrays."""

    __slots__ = ("ids", "lengths", "offsets", "packs")

    def __init__(self) -> None:
        self.ids = bytearray()
        self.packs = array("I")
        self.offsets = array("I")
        self.lengths = array("I")

    def __len__(self) -> int:
        return len(self.packs)

    def find(self, block_id: bytes) -> int:
        ids = self.ids
        lo, hi = 0, len(self.packs)
        while lo < hi:
            mid = (lo + hi) // 2
            key = ids[mid * 16 : mid * 16 + 16]
            if key < block_id:
                lo = mid + 1
            elif key > block_id:
                hi = mid
            else:
                return mid
        return -1

    def records(self) -> Iterator[tuple[bytes, int, int, int]]:
        ids = self.ids
        for n in range(len(self.packs)):
            yield bytes(ids[n * 16 : n * 16 + 16]), self.packs[n], self.offsets[n], self.lengths[n]

    def append(self, rec: tuple[bytes, int, int, int]) -> None:
        self.ids += rec[0]
        self.packs.append(rec[1])
        self.offsets.append(rec[2])
        self.lengths.append(rec[3])


class CompactIndex:
    """id -> (pack, offset, length) in ~28 bytes per entry. Not thread safe by itself."""

    def __init__(self) -> None:
        self._runs: list[_Run] = []
        self._pack_names: list[str] = []
        self._pack_no: dict[str, int] = {}

    def __len__(self) -> int:
        return sum(len(r) for r in self._runs)

    def _pack_number(self, pack: str) -> int:
        n = self._pack_no.get(pack)
        if n is None:
            n = len(self._pack_names)
            self._pack_names.append(pack)
            self._pack_no[pack] = n
        return n

    def add(self, entries: Iterable[SegmentEntry]) -> None:
        """Add a batch; entries already present keep their first location."""
        recs = sorted(
            ((e.id, self._pack_number(e.pack), e.offset, e.length) for e in entries),
            key=lambda r: r[0],
        )
        run = _Run()
        last = b""
        for rec in recs:
            if rec[0] != last and not self.contains(rec[0]):
                run.append(rec)
                last = rec[0]
        if len(run):
            self._runs.append(run)
            self._compact()

    def _compact(self) -> None:
        # Merge the newest run into its predecessor while it is at least half as big.
        while len(self._runs) >= 2 and len(self._runs[-1]) * 2 >= len(self._runs[-2]):
            b = self._runs.pop()
            a = self._runs.pop()
            merged = _Run()
            for rec in heapq.merge(a.records(), b.records(), key=lambda r: r[0]):
                merged.append(rec)
            self._runs.append(merged)

    def lookup(self, block_id: bytes) -> Location | None:
        for run in reversed(self._runs):
            n = run.find(block_id)
            if n >= 0:
                return Location(self._pack_names[run.packs[n]], run.offsets[n], run.lengths[n])
        return None

    def contains(self, block_id: bytes) -> bool:
        return any(run.find(block_id) >= 0 for run in self._runs)

    def items(self) -> Iterator[tuple[bytes, Location]]:
        for run in self._runs:
            for block_id, p, o, n in run.records():
                yield block_id, Location(self._pack_names[p], o, n)

    def packs(self) -> list[str]:
        return list(self._pack_names)
