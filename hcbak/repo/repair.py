"""`repo repair`: rebuild the index from the packs themselves and say what is lost.

Packs are self-describing: each carries a blob table in its trailer, and every blob
frame carries its id, lengths and a crc32. Repair reads every pack once, in file
order and one frame at a time (bounded memory), opens and re-hashes each blob, and
writes a new index of the healthy copies (one copy per id). Copies that fail are
recorded as damaged (hcbak/repo/damaged.py), so the next backup stores those blocks
again. A pack whose trailer is unreadable is walked frame by frame from its header
until the first frame whose crc fails. Then every point is checked against the new
index: whole, or which disks and blocks are lost.

Repair never deletes a pack. It replaces the index (new segments first, then the old
ones, damaged ones included, are deleted; the index is derived data). With `salvage`,
each point with lost blocks is rewritten as a new point whose lost blocks read as
zeros, marked in its `stats["salvaged"]`; the old point is then forgotten. Runs under
the exclusive lock, like prune.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from hcbak.errors import IntegrityError, RepoError
from hcbak.repo.blockmap import ZERO_BLOCK
from hcbak.repo.damaged import DamagedCopy, delete_record, write_record
from hcbak.repo.index import SegmentEntry, delete_segment, list_segments, write_segment
from hcbak.repo.locks import EXCLUSIVE
from hcbak.repo.pack import (
    BLOB_HEADER,
    PACK_HEADER,
    PACK_MAGIC,
    PackReader,
    parse_blob,
    read_trailer,
)
from hcbak.repo.points import Point
from hcbak.repo.repository import Repository
from hcbak.repo.storage.base import ObjectStore
from hcbak.repo.storage.local import refuse_if_append_only

SEGMENT_MAX_ENTRIES = 200_000
# A frame header that claims more than this is garbage, not a blob (blocks are <= 4 MiB).
MAX_FRAME = 64 * 1024 * 1024

Progress = Callable[[str], None]


@dataclass
class PointHealth:
    """One point after repair: whole, unreadable, or the blocks each disk lost."""

    id: str
    vm_name: str = ""
    created: str = ""
    unreadable: str | None = None
    lost: dict[str, list[int]] = field(default_factory=dict)  # disk uuid -> block indexes
    salvaged_as: str | None = None

    @property
    def whole(self) -> bool:
        return self.unreadable is None and not self.lost

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "vm": self.vm_name,
            "created": self.created,
            "whole": self.whole,
            "unreadable": self.unreadable,
            "lost_blocks": {d: len(b) for d, b in self.lost.items()},
            "lost_block_indexes": self.lost,
            "salvaged_as": self.salvaged_as,
        }


@dataclass
class RepairReport:
    dry_run: bool
    packs: int = 0
    packs_walked: list[str] = field(default_factory=list)  # trailer unreadable
    blobs_indexed: int = 0
    duplicate_copies: int = 0
    damaged_found: list[DamagedCopy] = field(default_factory=list)
    segments_written: int = 0
    segments_removed: int = 0
    points: list[PointHealth] = field(default_factory=list)

    @property
    def lost_points(self) -> list[PointHealth]:
        return [p for p in self.points if not p.whole and p.salvaged_as is None]

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "packs": self.packs,
            "packs_walked": self.packs_walked,
            "blobs_indexed": self.blobs_indexed,
            "duplicate_copies": self.duplicate_copies,
            "damaged_found": [
                {"id": c.id.hex(), "pack": c.pack, "offset": c.offset} for c in self.damaged_found
            ],
            "segments_written": self.segments_written,
            "segments_removed": self.segments_removed,
            "points": [p.to_json() for p in self.points],
        }


def repair(
    repo: Repository,
    *,
    dry_run: bool = False,
    salvage: bool = False,
    progress: Progress | None = None,
) -> RepairReport:
    if repo.lock is None or repo.lock.kind != EXCLUSIVE:
        raise RepoError("repair needs the repository's exclusive lock")
    if not dry_run:
        refuse_if_append_only(repo.store, "repair (it replaces the index)")
    say = progress or (lambda _m: None)
    repo.flush()
    report = RepairReport(dry_run=dry_run)
    known = {(c.pack, c.offset) for c in repo.damaged.copies}
    healthy: set[bytes] = set()
    batch: list[SegmentEntry] = []
    written: set[str] = set()
    packs = repo.pack_ids()
    report.packs = len(packs)
    say(f"reading {len(packs)} packs")
    for pack in packs:
        for entry in _healthy_blobs(repo, pack, known, report):
            if entry.id in healthy:
                report.duplicate_copies += 1
                continue
            healthy.add(entry.id)
            batch.append(entry)
            if len(batch) >= SEGMENT_MAX_ENTRIES:
                written.add(_write(repo, batch, dry_run))
                batch = []
    if batch or not written:
        written.add(_write(repo, batch, dry_run))
    report.blobs_indexed = len(healthy)
    report.segments_written = len(written)
    old = set(list_segments(repo.store)) - written
    report.segments_removed = len(old)
    say("checking points")
    lost: set[bytes] = set()
    report.points = list(_point_health(repo, healthy, lost))
    if not dry_run:
        say("replacing the index")
        # The new copies' records first, then the old index: a crash in between
        # leaves both, and every entry of both points at a pack that exists.
        found = report.damaged_found + _unrecorded_losses(repo, lost, report.damaged_found)
        write_record(repo.store, found, repo.envelope)
        repo.lock.check_held()  # delete only while the exclusive lease is still ours
        for seg in sorted(old):
            delete_segment(repo.store, seg)
        for name in repo.damaged.unreadable:  # every damaged copy was just found again
            delete_record(repo.store, name)
        repo.reload_index()
    if salvage and not dry_run:
        for health in report.points:
            if health.lost and health.unreadable is None:
                health.salvaged_as = _salvage(repo, health)
    return report


def _write(repo: Repository, entries: list[SegmentEntry], dry_run: bool) -> str:
    if dry_run:
        return f"(new segment {len(entries)} entries)"
    return write_segment(repo.store, entries, repo.envelope)


def _healthy_blobs(
    repo: Repository, pack: str, known: set[tuple[str, int]], report: RepairReport
) -> Iterator[SegmentEntry]:
    """Index entries of the blobs of one pack that open and re-hash correctly."""
    try:
        table = sorted(read_trailer(repo.store, pack), key=lambda e: e[1])
    except (IntegrityError, RepoError):
        table = walk_frames(repo.store, pack)
        report.packs_walked.append(pack)
    try:
        reader = PackReader(repo.store, pack)
    except RepoError:
        return
    for block_id, offset, length, plain in table:
        if (pack, offset) in known:
            report.damaged_found.append(DamagedCopy(block_id, pack, offset, length))
            continue
        frame = reader.read(offset, length)
        try:
            repo.decode_frame(block_id, frame)
        except IntegrityError:
            report.damaged_found.append(DamagedCopy(block_id, pack, offset, length))
            continue
        yield SegmentEntry(block_id, pack, offset, length, plain)


def walk_frames(store: ObjectStore, pack: str) -> list[tuple[bytes, int, int, int]]:
    """(id, offset, length, plain_len) of the frames of a pack without a usable
    trailer, from its header to the first frame whose crc32 does not match."""
    out: list[tuple[bytes, int, int, int]] = []
    try:
        reader = PackReader(store, pack)
        if reader.read(0, PACK_HEADER.size)[:8] != PACK_MAGIC:
            return out
        pos = PACK_HEADER.size
        while pos + BLOB_HEADER.size <= reader.size:
            head = reader.read(pos, BLOB_HEADER.size)
            block_id, _f, _c, _r, plain, stored, _crc = BLOB_HEADER.unpack(head)
            length = BLOB_HEADER.size + stored
            if stored > MAX_FRAME or pos + length > reader.size:
                break
            try:
                parse_blob(reader.read(pos, length), "frame")
            except IntegrityError:
                break  # garbage or the trailer: nothing after it can be trusted
            out.append((block_id, pos, length, plain))
            pos += length
    except RepoError:
        pass
    return out


def _unrecorded_losses(
    repo: Repository, lost: set[bytes], found: list[DamagedCopy]
) -> list[DamagedCopy]:
    """Copies, as the index being replaced names them, of the lost blocks no record
    names yet (a missing pack, frames after a walk stopped). Recorded, they count as
    set aside: the next backup reads those blocks again even where they did not
    change (`set_aside_ids`); unrecorded, an incremental would keep their ids and
    commit a point that cannot restore."""
    recorded = {c.id for c in found} | repo.damaged.ids()
    copies = []
    for block_id in sorted(lost - recorded):
        loc = repo.locate(block_id)
        if loc is not None:
            copies.append(DamagedCopy(block_id, loc.pack, loc.offset, loc.length))
    return copies


def _point_health(
    repo: Repository, healthy: set[bytes], lost_ids: set[bytes]
) -> Iterator[PointHealth]:
    """Each point against the healthy copies; the ids they lost go to `lost_ids`."""
    for pid in repo.point_ids():
        try:
            point = repo.load_point(pid)
        except (IntegrityError, RepoError) as exc:
            yield PointHealth(pid, unreadable=str(exc))
            continue
        health = PointHealth(pid, point.vm_name, point.created.isoformat(timespec="seconds"))
        for disk in point.disks:
            bm = disk.block_map
            lost = [(i, b) for i, b in bm.stored() if b not in healthy]
            if lost:
                health.lost[disk.uuid] = [i for i, _b in lost]
                lost_ids.update(b for _i, b in lost)
        yield health


def _salvage(repo: Repository, health: PointHealth) -> str:
    """Write a copy of the point whose lost blocks read as zeros, then forget it.

    Marked in stats["salvaged"]; its damaged disks lose their snapshot serial, so no
    incremental backup ever builds on a map with holes in it."""
    point = repo.load_point(health.id)
    disks = []
    for disk in point.disks:
        lost = health.lost.get(disk.uuid)
        if not lost:
            disks.append(disk)
            continue
        bm = disk.block_map.copy()
        for i in lost:
            bm.set(i, ZERO_BLOCK)
        disks.append(replace(disk, block_map=bm, serial=None, incremental=False))
    stats = dict(point.stats)
    stats["salvaged"] = {
        "from_point": point.id,
        "zeroed_blocks": {d: len(b) for d, b in health.lost.items()},
    }
    salvaged: Point = replace(point, id=repo.new_point_id(), disks=disks, stats=stats)
    repo.save_point(salvaged)
    repo.forget_points([point.id])
    return salvaged.id
