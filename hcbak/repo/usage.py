"""What the points use: the referenced block ids joined with the index, streaming.

Why: prune must know, per pack, how many of its indexed bytes some point still needs,
and where each needed blob is, in pack order (to repack it or to index it again).
Held as Python sets and lists that cost ~500 bytes per block (494 MiB at 1 M blocks).
Here both sides are sorted streams instead: the points' block ids go through an
external sorter that drops repeats (hcbak/repo/extsort.py), the index is read in id
order (the index cache's runs are sorted), and one merge join of the two yields the
per-pack byte counts and writes each live blob's location to a second sorter keyed by
pack and offset. Memory: one sorter batch, the per-pack counters, and the referenced
ids that have no index entry (none unless a segment was lost).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path

from hcbak.errors import IntegrityError
from hcbak.repo.blockmap import ID_LEN
from hcbak.repo.extsort import RecordSorter
from hcbak.repo.index import Location
from hcbak.repo.repository import Repository

# A live blob: raw pack id, offset (big-endian, so bytes sort by pack then offset),
# block id, stored length, plain length (0 until read from the pack's own table).
LIVE = struct.Struct(">32sI16sII")
REFERENCED_IN_MEMORY = 400_000  # distinct ids deduplicated in memory before a spill
LIVE_IN_MEMORY = 200_000  # live blob records sorted in memory before a spill
_BATCH = 10_000


@dataclass
class Usage:
    """One pass of the index (in id order) against the referenced ids (in id order)."""

    referenced: int = 0  # distinct block ids the readable points reference
    unused: int = 0  # indexed blocks no point references
    total: dict[str, int] = field(default_factory=dict)  # indexed bytes per pack
    live: dict[str, int] = field(default_factory=dict)  # referenced bytes per pack
    # Referenced ids without an index entry: only a pack's own table can still hold
    # them, so such a pack must stay (prune's `_account`).
    not_indexed: set[bytes] = field(default_factory=set)
    damaged_referenced: set[bytes] = field(default_factory=set)  # recorded ids still needed
    in_watched: set[bytes] = field(default_factory=set)  # referenced ids in `watch` packs


def referenced_sorter(folder: Path | None) -> RecordSorter:
    """The sorter for the points' block ids (repeats dropped)."""
    return RecordSorter(folder, ID_LEN, unique=True, in_memory=REFERENCED_IN_MEMORY)


def live_sorter(folder: Path | None) -> RecordSorter:
    """The sorter for LIVE records (live blobs, and the repacked ones' new places)."""
    return RecordSorter(folder, LIVE.size, in_memory=LIVE_IN_MEMORY)


def referenced_ids(
    repo: Repository, point_ids: list[str], sorter: RecordSorter, problems: list[str]
) -> None:
    """Every block id the readable points reference, into `sorter` (unique). Points
    are read one at a time; unreadable ones go to `problems`."""
    for pid in point_ids:
        try:
            point = repo.load_point(pid)
        except IntegrityError as exc:
            if pid not in repo.unreadable_points:
                problems.append(f"point manifest {pid} is unreadable ({exc.message})")
            continue
        for disk in point.disks:
            sorter.add(disk.block_map.ids())


def point_order(repo: Repository) -> list[str]:
    """Point ids with each VM's points together (oldest first): consecutive points of a
    disk share most ids, so the sorter drops the repeats in memory. Points without a
    readable header come last (their load reports them)."""
    summaries = sorted(repo.list_points(), key=lambda s: (s.vm_uuid, s.created, s.id))
    ordered = [s.id for s in summaries]
    listed = set(ordered)
    return ordered + [pid for pid in repo.point_ids() if pid not in listed]


class LiveWriter:
    """Blob places into a LIVE sorter, in batches (one `add` per 10 000 records)."""

    def __init__(self, sorter: RecordSorter) -> None:
        self.sorter = sorter
        self._raw: dict[str, bytes] = {}  # pack name -> raw id, converted once
        self._batch: list[bytes] = []

    def add(self, block_id: bytes, loc: Location) -> None:
        raw = self._raw.get(loc.pack)
        if raw is None:
            raw = self._raw[loc.pack] = bytes.fromhex(loc.pack)
        self._batch.append(LIVE.pack(raw, loc.offset, block_id, loc.length, 0))
        if len(self._batch) >= _BATCH:
            self.flush()

    def flush(self) -> None:
        self.sorter.add(self._batch)
        self._batch = []


def join(
    repo: Repository,
    referenced: RecordSorter,
    live: RecordSorter | None,
    watch: frozenset[str] | set[str] = frozenset(),
) -> Usage:
    """Merge the sorted referenced ids with the index in id order; each live blob's
    location goes to `live` (LIVE records; prune), and referenced ids located in a
    `watch` pack to `usage.in_watched` (verify: the packs it found damaged)."""
    usage = Usage()
    damaged = {c.id for c in repo.damaged.copies}
    writer = LiveWriter(live) if live is not None else None
    refs = referenced.records()
    ref = next(refs, None)
    total, live_bytes = usage.total, usage.live
    for block_id, loc in repo.index.items_by_id():
        pack = loc.pack
        total[pack] = total.get(pack, 0) + loc.length
        while ref is not None and ref < block_id:
            usage.not_indexed.add(ref)
            ref = _next_ref(usage, refs, damaged, ref)
        if ref != block_id:
            usage.unused += 1
            continue
        live_bytes[pack] = live_bytes.get(pack, 0) + loc.length
        if watch and pack in watch:
            usage.in_watched.add(block_id)
        ref = _next_ref(usage, refs, damaged, ref)
        if writer is not None:
            writer.add(block_id, loc)
    while ref is not None:
        usage.not_indexed.add(ref)
        ref = _next_ref(usage, refs, damaged, ref)
    if writer is not None:
        writer.flush()
    return usage


def _next_ref(usage: Usage, refs: Iterator[bytes], damaged: set[bytes], ref: bytes) -> bytes | None:
    """Count `ref` (done with) and step to the next referenced id."""
    usage.referenced += 1
    if ref in damaged:
        usage.damaged_referenced.add(ref)
    return next(refs, None)


def by_pack(live: RecordSorter) -> Iterator[tuple[str, list[tuple[int, bytes, int]]]]:
    """Live blobs grouped by pack, each group in offset order: (offset, id, length)."""
    for raw, group in groupby(live.records(), key=lambda r: r[:32]):
        yield raw.hex(), [LIVE.unpack(r)[1:4] for r in group]
