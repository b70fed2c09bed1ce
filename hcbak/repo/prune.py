"""`repo prune`: delete data no point references, repacking mostly-dead packs.

Runs only under the exclusive lock, so no backup is writing or referencing blocks that
are not yet in a committed point. Before deleting anything it accounts for every pack
(see `_account`): an unreadable index segment, manifest or damaged-copy record, a
pack the index names that is missing, or an unindexed pack whose own blob table cannot
be read makes it refuse (IntegrityError, exit 6) instead of guessing; `repo repair`
is the way out. A pack no readable segment lists is deleted only when its own table
shows that none of its blobs is referenced (or each referenced one has another,
indexed copy). Crash-safe order (docs/format.md, "Prune"):
1. write new packs holding the live blobs of packs being repacked (fsynced, renamed);
2. write the new index segment(s) covering every live blob;
3. delete the old index segments;
4. delete the old packs (fully dead, repacked, and unindexed leftovers of crashes);
5. drop damaged-copy records whose pack is gone (kept while a point needs the block
   and no healthy copy exists: the record makes the next backup store it again);
6. on an Object Lock bucket, free the versions of deleted objects whose retention has
   ended; those still locked are reported (storage/locked.py), never an error.
A crash before 3 leaves duplicate index entries that all point at existing packs; a
crash before 4 leaves unreferenced packs that the next prune deletes. At no moment does
a committed point reference a block whose only copy was deleted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hcbak.errors import IntegrityError, RepoError
from hcbak.repo.damaged import DamagedCopy, replace_records
from hcbak.repo.extsort import RecordSorter
from hcbak.repo.fsio import typed_os_error
from hcbak.repo.index import SegmentEntry, delete_segment, list_segments, write_segment
from hcbak.repo.locks import EXCLUSIVE
from hcbak.repo.pack import PackReader, PackWriter, pack_key, parse_blob, read_trailer
from hcbak.repo.repository import Repository
from hcbak.repo.storage.local import refuse_if_append_only
from hcbak.repo.storage.locked import LockedObjects, free_deleted
from hcbak.repo.usage import (
    LIVE,
    Usage,
    by_pack,
    join,
    live_sorter,
    point_order,
    referenced_ids,
    referenced_sorter,
)

REPACK_BELOW = 0.5  # repack a pack when less than this fraction of its bytes is live
SEGMENT_MAX_ENTRIES = 200_000

Progress = Callable[[str], None]


class PruneRefusedError(IntegrityError):
    """Prune cannot account for every pack, so it deletes nothing (exit 6)."""

    def __init__(self, problems: list[str], repo_name: str | None = None) -> None:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        name = repo_name or "NAME"
        super().__init__(
            f"prune refused, nothing deleted: {problems[0]}{more}",
            hint=f"run `hcbak repo verify {name}`, then `hcbak repo repair {name}`",
        )
        self.problems = problems


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
    # Packs prune leaves alone: unindexed ones holding referenced blobs (repair indexes
    # them), indexed ones whose own table is unreadable, and those holding the only
    # (damaged) copy of a referenced block.
    packs_kept: list[str] = field(default_factory=list)
    damaged_records_dropped: int = 0
    # Object Lock stores only: deleted objects whose versions are still locked.
    locked: LockedObjects | None = None

    def to_json(self) -> dict[str, Any]:
        locked = self.locked.to_json() if self.locked is not None else {}
        return {
            "dry_run": self.dry_run,
            "referenced_blocks": self.referenced_blocks,
            "unused_blocks": self.unused_blocks,
            "packs_deleted": len(self.packs_deleted),
            "packs_repacked": len(self.packs_repacked),
            "packs_written": len(self.packs_written),
            "bytes_freed": self.bytes_freed,
            "segments_replaced": self.segments_replaced,
            "packs_kept": len(self.packs_kept),
            "damaged_records_dropped": self.damaged_records_dropped,
            **locked,
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
    if not dry_run:
        refuse_if_append_only(repo.store, "prune")
    say = progress or (lambda _m: None)
    step = _hook or (lambda _s: None)
    repo.flush()
    report = PruneReport(dry_run=dry_run)
    say("reading points")
    problems = unreadable_metadata(repo)
    folder = repo.scratch_folder
    with referenced_sorter(folder) as referenced, live_sorter(folder) as live:
        referenced_ids(repo, point_order(repo), referenced, problems)
        usage = join(repo, referenced, live)
        referenced.close()  # its bucket files are not needed any more
        report.referenced_blocks, report.unused_blocks = usage.referenced, usage.unused
        say("checking every pack's own table")
        doomed, repack = _plan(repo, report, usage, repack_below, problems)
        gone = set(doomed + repack)
        dropped = [c for c in repo.damaged.copies if _record_done(repo, c, gone, usage)]
        report.damaged_records_dropped = len(dropped)
        nothing_to_do = not doomed and not repack and not report.unused_blocks and not dropped
        if dry_run and not nothing_to_do:
            # The real run rewrites the whole index (one that comes out byte-identical
            # keeps its name, which a dry run cannot know without writing it).
            report.segments_replaced = len(list_segments(repo.store))
        if dry_run or nothing_to_do:
            if not dry_run:
                repo.remove_temp_files()
                report.locked = free_deleted(repo.store)
            return report
        _apply(repo, report, usage, live, say, step)
    return report


def _plan(
    repo: Repository,
    report: PruneReport,
    usage: Usage,
    repack_below: float,
    problems: list[str],
) -> tuple[list[str], list[str]]:
    """(packs to delete, packs to repack); refuses (PruneRefusedError) with problems."""
    live, total = usage.live, usage.total
    sizes = repo.pack_sizes()  # one listing of the packs, with their sizes
    unused_unindexed, kept = _account(repo, usage.not_indexed, set(total), set(sizes), problems)
    if problems:
        raise PruneRefusedError(problems)
    report.packs_kept = sorted(kept)
    # A damaged copy is never carried over (the index skips it). Once a healthy copy
    # exists (or nothing references the block), its pack is rewritten without it,
    # whatever its share of live bytes; until then the pack stays as it is: the
    # damaged copy is all that is left of that block.
    unhealed = {
        c.pack
        for c in repo.damaged.copies
        if c.id in usage.damaged_referenced and not repo.index.contains(c.id)
    }
    kept |= unhealed & set(total)
    rewrite = repo.damaged.packs() - unhealed
    doomed = sorted(unused_unindexed | {p for p in total if not live.get(p) and p not in kept})
    repack = sorted(
        p
        for p in total
        if p not in kept
        and live.get(p, 0) > 0
        and (live[p] < repack_below * total[p] or p in rewrite)
    )
    report.bytes_freed = sum(sizes.get(p, 0) for p in doomed + repack)
    report.packs_deleted, report.packs_repacked = doomed, repack
    return doomed, repack


def _apply(
    repo: Repository,
    report: PruneReport,
    usage: Usage,
    live: RecordSorter,
    say: Progress,
    step: Callable[[str], None],
) -> None:
    """The deletions, in the crash-safe order of the module docstring."""
    assert repo.lock is not None  # prune() checked it holds the exclusive lock
    doomed, repack = report.packs_deleted, report.packs_repacked
    say(f"repacking {len(repack)} packs")
    with live_sorter(repo.scratch_folder) as moved:
        _repack(repo, set(repack), live, moved, report)
        step("packs-written")

        say("writing the new index")
        old_segments = set(list_segments(repo.store))
        new_segments = _write_index(repo, set(repack), live, moved)
    step("index-written")
    repo.lock.check_held()  # delete only while the exclusive lease is still this run's
    # A new segment can share its (content-derived) name with an old one: keep it.
    old_segments -= new_segments
    for seg in sorted(old_segments):
        delete_segment(repo.store, seg)
    report.segments_replaced = len(old_segments)
    step("old-index-deleted")
    say(f"deleting {len(doomed) + len(repack)} packs")
    repo.lock.check_held()  # and again after the segments (a hang there lost the lease?)
    # Pack names are content hashes: a repack that wrote exactly the bytes of an old
    # pack got that pack's name (and kept the file already there). Never delete it.
    written = set(report.packs_written)
    for p in doomed + repack:
        if p not in written:
            repo.store.delete(pack_key(p))
    gone = set(doomed + repack) - written
    step("packs-deleted")
    # Only now that their packs are gone (a repack may have found more damage).
    keep = [c for c in repo.damaged.copies if not _record_done(repo, c, gone, usage)]
    if len(keep) < len(repo.damaged.copies):
        replace_records(repo.store, keep, repo.damaged.records, repo.envelope)
        report.damaged_records_dropped = len(repo.damaged.copies) - len(keep)
    repo.remove_temp_files()
    report.locked = free_deleted(repo.store)  # after expiry, what Object Lock held goes
    repo.reload_index()
    _ = repo.index  # waits: the index cache is rebuilt now, not by the next backup's open
    step("done")


def _write_index(
    repo: Repository, repacked: set[str], live: RecordSorter, moved: RecordSorter
) -> set[str]:
    """New segments covering every live blob: those left in their packs (plain lengths
    from each pack's own table, read once per pack) and those repacked (`moved`).
    Written in batches as the sorted streams go by: memory holds one batch."""
    names: set[str] = set()
    batch: list[SegmentEntry] = []

    def emit(entries: list[SegmentEntry]) -> None:
        batch.extend(entries)
        if len(batch) >= SEGMENT_MAX_ENTRIES:
            names.add(write_segment(repo.store, batch[:SEGMENT_MAX_ENTRIES], repo.envelope))
            del batch[:SEGMENT_MAX_ENTRIES]

    for pack, blobs in by_pack(live):
        if pack not in repacked:
            plain = _plain_lengths(repo, pack)
            emit([SegmentEntry(i, pack, o, n, plain.get(o, 0)) for o, i, n in blobs])
    for record in moved.records():
        raw, offset, block_id, length, plain_len = LIVE.unpack(record)
        emit([SegmentEntry(block_id, raw.hex(), offset, length, plain_len)])
    if batch or not names:  # an empty index is one empty segment
        names.add(write_segment(repo.store, batch, repo.envelope))
    return names


def _plain_lengths(repo: Repository, pack: str) -> dict[int, int]:
    """Index segments carry plain lengths (for stats); a pack's own table has them."""
    try:
        return {o: p for _, o, _, p in read_trailer(repo.store, pack)}
    except (IntegrityError, RepoError):
        return {}  # a kept pack with a damaged table: plain lengths unknown (0)


def _repack(
    repo: Repository,
    packs: set[str],
    live: RecordSorter,
    moved: RecordSorter,
    report: PruneReport,
) -> None:
    """Copy live blob frames as they are (still encrypted) into new packs; their new
    places go to `moved`."""
    writer: PackWriter | None = None
    try:
        for pack, blobs in by_pack(live):
            if pack not in packs:
                continue
            reader = PackReader(repo.store, pack)
            for offset, block_id, length in blobs:
                frame = reader.read(offset, length)
                try:
                    blob = parse_blob(frame, f"block {block_id.hex()} in pack {pack}")
                    if blob.id != block_id:
                        raise IntegrityError(f"block {block_id.hex()}: another blob")
                except IntegrityError:
                    # Never copy a damaged frame: record it; the block counts as
                    # absent and the next backup of its VM stores it again.
                    repo.record_damage([DamagedCopy(block_id, pack, offset, length)])
                    continue
                if writer is None:
                    writer = PackWriter(repo.store)
                writer.append(block_id, frame, blob.plain_len)
                if writer.size >= repo.pack_target:
                    _finish(writer, report, moved)
                    writer = None
        if writer is not None:
            _finish(writer, report, moved)
            writer = None
    except OSError as exc:
        if writer is not None:
            writer.abort()
        raise typed_os_error(exc, "a repacked pack") from exc
    except BaseException:
        if writer is not None:
            writer.abort()
        raise


def unreadable_metadata(repo: Repository) -> list[str]:
    """Index segments, damaged-copy records and point manifests (headers) that fail
    their checks: without them prune cannot tell which packs hold referenced blobs or
    which copies are bad. Cheap (no pack is read): `repo prune` asks it before it lets
    retention forget anything."""
    problems = [f"index segment {seg} is unreadable" for seg in sorted(repo.bad_segments)]
    problems += [
        f"damaged-copy record {name} is unreadable" for name in sorted(repo.damaged.unreadable)
    ]
    repo.list_points()
    problems += [f"point manifest {pid} is unreadable" for pid in sorted(repo.unreadable_points)]
    return problems


def _account(
    repo: Repository,
    not_indexed: set[bytes],
    indexed: set[str],
    on_disk: set[str],
    problems: list[str],
) -> tuple[set[str], set[str]]:
    """Check every pack against its own blob table, one pack at a time.

    Returns (unindexed packs that are provably unused, packs to keep as they are).
    An indexed pack that is missing, or an unindexed one whose table cannot be read,
    is a problem (prune then refuses). An indexed pack whose table cannot be read is
    kept (the index still locates its blobs, but what else it holds is unknown). A
    pack holding a referenced blob that has no indexed copy at all, or (unindexed) no
    other indexed copy, is kept: only `repo repair` may index it. So an index that
    lost entries (a segment deleted by someone) never makes prune delete or repack
    away the only copy of a block a point needs.
    """
    problems += [f"pack {p} is missing (the index names it)" for p in sorted(indexed - on_disk)]
    unused: set[str] = set()
    kept: set[str] = set()
    for pack in sorted(on_disk):
        try:
            table = read_trailer(repo.store, pack)
        except (IntegrityError, RepoError) as exc:
            if pack in indexed:
                kept.add(pack)
            else:
                why = exc.message
                problems.append(
                    f"pack {pack} is in no index and its blob table is unreadable ({why})"
                )
            continue
        # A referenced blob with an indexed copy is found through the index; one
        # without (`not_indexed`, from the join) has only the copies in pack tables.
        if not_indexed and any(block_id in not_indexed for block_id, _o, _n, _p in table):
            kept.add(pack)
        elif pack not in indexed:
            unused.add(pack)
    return unused, kept


def _pack_gone(repo: Repository, copy: DamagedCopy, deleted: set[str]) -> bool:
    return copy.pack in deleted or repo.pack_size(copy.pack) is None


def _record_done(repo: Repository, copy: DamagedCopy, deleted: set[str], usage: Usage) -> bool:
    """A damaged copy's record can go once its pack is gone and no point still needs
    the block without a healthy copy. While one does, the record is what makes the
    next backup read the block again (`set_aside_ids`): dropped, an incremental
    keeps the unchanged id and commits a point that cannot restore (a repack that
    found the damage deletes its pack, so a second prune used to drop it)."""
    if not _pack_gone(repo, copy, deleted):
        return False
    return copy.id not in usage.damaged_referenced or repo.has_block(copy.id)


def _finish(writer: PackWriter, report: PruneReport, moved: RecordSorter) -> None:
    pack_id = writer.finish()
    report.packs_written.append(pack_id)
    raw = bytes.fromhex(pack_id)
    moved.add(LIVE.pack(raw, o, i, n, p) for i, o, n, p in writer.entries)
