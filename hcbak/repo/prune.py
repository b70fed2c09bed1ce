"""`repo prune`: delete data no point references, repacking mostly-dead packs.

Runs only under the exclusive lock, so no backup is writing or referencing blocks that
are not yet in a committed point. Crash-safe order (docs/format.md, "Prune"):
1. write new packs holding the live blobs of packs being repacked (fsynced, renamed);
2. write the new index segment(s) covering every live blob;
3. delete the old index segments;
4. delete the old packs (fully dead, repacked, and unindexed leftovers of crashes).
A crash before 3 leaves duplicate index entries that all point at existing packs; a
crash before 4 leaves unreferenced packs that the next prune deletes. At no moment does
a committed point reference a block whose only copy was deleted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hcbak.errors import RepoError
from hcbak.repo import fsio
from hcbak.repo.index import SegmentEntry, list_segments, write_segment
from hcbak.repo.locks import EXCLUSIVE
from hcbak.repo.pack import PackWriter, pack_path, parse_blob, read_trailer
from hcbak.repo.repository import Repository

REPACK_BELOW = 0.5  # repack a pack when less than this fraction of its bytes is live
SEGMENT_MAX_ENTRIES = 200_000

Progress = Callable[[str], None]


@dataclass
class PruneReport:
    dry_run: bool
    referenced_blocks: int = 0
    unused_blocks: int = 0
    packs_deleted: list[str] = field(default_factory=list)
    packs_repacked: list[str] = field(default_factory=list)
    packs_written: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    segments_replaced: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "referenced_blocks": self.referenced_blocks,
            "unused_blocks": self.unused_blocks,
            "packs_deleted": len(self.packs_deleted),
            "packs_repacked": len(self.packs_repacked),
            "packs_written": len(self.packs_written),
            "bytes_freed": self.bytes_freed,
            "segments_replaced": self.segments_replaced,
        }


def prune(
    repo: Repository,
    *,
    dry_run: bool = False,
    repack_below: float = REPACK_BELOW,
    progress: Progress | None = None,
    _hook: Callable[[str], None] | None = None,
) -> PruneReport:
    """Remove unreferenced data. `_hook(step)` lets crash tests stop between steps."""
    if repo.lock is None or repo.lock.kind != EXCLUSIVE:
        raise RepoError("prune needs the repository's exclusive lock")
    say = progress or (lambda _m: None)
    step = _hook or (lambda _s: None)
    repo.flush()
    report = PruneReport(dry_run=dry_run)
    say("reading points")
    referenced: set[bytes] = set()
    for pid in repo.point_ids():
        for disk in repo.load_point(pid).disks:
            referenced.update(disk.block_map.ids())
    report.referenced_blocks = len(referenced)

    live: dict[str, int] = {}
    total: dict[str, int] = {}
    for block_id, loc in repo.index.items():
        total[loc.pack] = total.get(loc.pack, 0) + loc.length
        if block_id in referenced:
            live[loc.pack] = live.get(loc.pack, 0) + loc.length
        else:
            report.unused_blocks += 1
    on_disk = set(repo.pack_ids())
    doomed = sorted((on_disk - set(total)) | {p for p in total if not live.get(p)})
    repack = sorted(p for p in total if 0 < live.get(p, 0) < repack_below * total[p])
    for p in doomed + repack:
        path = pack_path(repo.root, p)
        report.bytes_freed += path.stat().st_size if path.exists() else 0
    report.packs_deleted, report.packs_repacked = doomed, repack
    nothing_to_do = not doomed and not repack and not report.unused_blocks
    if dry_run and not nothing_to_do:
        # The real run rewrites the whole index (one that comes out byte-identical
        # keeps its name, which a dry run cannot know without writing it).
        report.segments_replaced = len(list_segments(repo.root))
    if dry_run or nothing_to_do:
        if not dry_run:
            repo.remove_temp_files()
        return report

    say(f"repacking {len(repack)} packs")
    entries: list[SegmentEntry] = []
    moved = _repack(repo, repack, referenced, report)
    for block_id, loc in repo.index.items():
        if block_id not in referenced:
            continue
        if loc.pack in repack:
            continue
        entries.append(SegmentEntry(block_id, loc.pack, loc.offset, loc.length, 0))
    entries = _with_plain_lengths(repo, entries) + moved
    step("packs-written")

    say("writing the new index")
    old_segments = set(list_segments(repo.root))
    new_segments = {
        write_segment(repo.root, entries[i : i + SEGMENT_MAX_ENTRIES], repo.envelope)
        for i in range(0, max(len(entries), 1), SEGMENT_MAX_ENTRIES)
    }
    step("index-written")
    repo.lock.check_held()  # delete only while the exclusive lease is still this run's
    # A new segment can share its (content-derived) name with an old one: keep it.
    old_segments -= new_segments
    for seg in sorted(old_segments):
        fsio.remove_durably(repo.root / "index" / seg)
    report.segments_replaced = len(old_segments)
    step("old-index-deleted")
    say(f"deleting {len(doomed) + len(repack)} packs")
    repo.lock.check_held()  # and again after the segments (a hang there lost the lease?)
    for p in doomed + repack:
        fsio.remove_durably(pack_path(repo.root, p))
    repo.remove_temp_files()
    repo.reload_index()
    step("done")
    return report


def _repack(
    repo: Repository, packs: list[str], referenced: set[bytes], report: PruneReport
) -> list[SegmentEntry]:
    """Copy live blob frames as they are (still encrypted) into new packs."""
    moved: list[SegmentEntry] = []
    writer: PackWriter | None = None
    wanted: dict[str, list[tuple[bytes, int, int]]] = {p: [] for p in packs}
    for block_id, loc in repo.index.items():
        if loc.pack in wanted and block_id in referenced:
            wanted[loc.pack].append((block_id, loc.offset, loc.length))
    try:
        for pack in packs:
            with open(pack_path(repo.root, pack), "rb") as fh:
                for block_id, offset, length in sorted(wanted[pack], key=lambda e: e[1]):
                    fh.seek(offset)
                    frame = fh.read(length)
                    blob = parse_blob(frame, f"block {block_id.hex()} in pack {pack}")
                    if writer is None:
                        writer = PackWriter(repo.root)
                    writer.append(block_id, frame, blob.plain_len)
                    if writer.size >= repo.pack_target:
                        moved += _finish(writer, report)
                        writer = None
        if writer is not None:
            moved += _finish(writer, report)
            writer = None
    except OSError as exc:
        if writer is not None:
            writer.abort()
        fsio.raise_os_error(exc, "a repacked pack")
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return moved


def _finish(writer: PackWriter, report: PruneReport) -> list[SegmentEntry]:
    pack_id = writer.finish()
    report.packs_written.append(pack_id)
    return [SegmentEntry(i, pack_id, o, n, p) for i, o, n, p in writer.entries]


def _with_plain_lengths(repo: Repository, entries: list[SegmentEntry]) -> list[SegmentEntry]:
    """Index segments carry plain lengths (for stats); take them from pack trailers."""
    by_pack: dict[str, dict[int, int]] = {}
    out = []
    for e in sorted(entries, key=lambda e: e.pack):
        if e.pack not in by_pack:
            by_pack.clear()
            by_pack[e.pack] = {o: p for _, o, _, p in read_trailer(pack_path(repo.root, e.pack))}
        out.append(SegmentEntry(e.id, e.pack, e.offset, e.length, by_pack[e.pack].get(e.offset, 0)))
    return out
