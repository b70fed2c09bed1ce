"""`repo verify`: structure checks and, optionally, reading the data back.

Streaming and bounded: points are loaded one at a time; per pack only its trailer is
kept (8 bytes per blob, next to the 28-byte index); with --read-data packs are read
sequentially in 1 MiB frames. Problems become a list of messages plus the points they
affect; the CLI turns a non-empty list into exit 6.

Damage found by --read-data is recorded (hcbak/repo/damaged.py), so the next backup
stores those blocks again. Copies recorded earlier are not read again: a point that
needs one counts it as damaged until a backup has stored a healthy copy.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from hcbak.errors import IntegrityError, RepoError
from hcbak.repo.damaged import DamagedCopy
from hcbak.repo.pack import PackReader, iter_pack_frames, read_trailer
from hcbak.repo.repair import walk_frames
from hcbak.repo.repository import Repository
from hcbak.repo.usage import LiveWriter, by_pack, join, live_sorter, referenced_sorter

Progress = Callable[[str], None]


@dataclass
class VerifyReport:
    errors: list[str] = field(default_factory=list)
    affected_points: list[str] = field(default_factory=list)
    points: int = 0
    packs: int = 0
    blobs: int = 0
    packs_read: int = 0
    blobs_read: int = 0
    bytes_read: int = 0
    unindexed_packs: int = 0
    read_data_percent: float = 0.0
    damaged_copies: int = 0  # recorded (set aside), including those found now

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "errors": self.errors,
            "affected_points": self.affected_points,
            "points": self.points,
            "packs": self.packs,
            "blobs": self.blobs,
            "packs_read": self.packs_read,
            "blobs_read": self.blobs_read,
            "bytes_read": self.bytes_read,
            "unindexed_packs": self.unindexed_packs,
            "read_data_percent": self.read_data_percent,
            "damaged_copies": self.damaged_copies,
        }


def verify(
    repo: Repository,
    *,
    read_data_percent: float = 0.0,
    seed: int | None = None,
    progress: Progress | None = None,
) -> VerifyReport:
    report = VerifyReport(read_data_percent=read_data_percent)
    say = progress or (lambda _m: None)
    repo.flush()
    for seg, why in repo.bad_segments.items():
        report.errors.append(f"index segment {seg}: {why}")
    for name, why in repo.damaged.unreadable.items():
        report.errors.append(f"damaged-copy record {name}: {why}")
    say("checking packs")
    walked: dict[str, list[tuple[bytes, int, int, int]]] = {}
    bad_packs = _check_packs(repo, report, walked)
    bad_ids: set[bytes] = set()
    if read_data_percent > 0:
        say(f"reading {read_data_percent:g}% of the packs")
        _read_data(repo, report, read_data_percent, seed, bad_packs, bad_ids, walked)
    report.damaged_copies = len(repo.damaged.copies)
    say("checking points")
    _check_points(repo, report, bad_packs, bad_ids)
    return report


def _check_packs(
    repo: Repository, report: VerifyReport, walked: dict[str, list[tuple[bytes, int, int, int]]]
) -> set[str]:
    """Trailers of every indexed pack, and every index entry against its trailer (or,
    for a pack whose trailer is damaged, against its walked frames, kept in `walked`).

    Streaming: the index entries go through an external sorter by (pack, offset)
    (hcbak/repo/usage.py), so each pack's entries are checked against its table while
    only that pack's offsets are in memory."""
    on_disk = set(repo.pack_ids())
    report.packs = len(on_disk)
    bad: set[str] = set()
    indexed: set[str] = set()
    with live_sorter(repo.scratch_folder) as entries:
        writer = LiveWriter(entries)
        for block_id, loc in repo.index.items():
            report.blobs += 1
            writer.add(block_id, loc)
        writer.flush()
        for pack, blobs in by_pack(entries):
            indexed.add(pack)
            if not _entries_match(repo, report, pack, blobs, on_disk, walked):
                bad.add(pack)
    report.unindexed_packs = len(on_disk - indexed)
    return bad


def _entries_match(
    repo: Repository,
    report: VerifyReport,
    pack: str,
    blobs: list[tuple[int, bytes, int]],
    on_disk: set[str],
    walked: dict[str, list[tuple[bytes, int, int, int]]],
) -> bool:
    """One indexed pack: it exists, its table reads (else its frames are walked), and
    every index entry in it starts at a blob and ends within its data."""
    if pack not in on_disk:
        report.errors.append(f"pack {pack} is missing")
        return False
    try:
        table = read_trailer(repo.store, pack)
    except (IntegrityError, RepoError) as exc:
        report.errors.append(str(exc))
        # Its frames describe themselves: index entries that start at a healthy
        # frame still count (a damaged table alone loses no block).
        table = walk_frames(repo.store, pack)
        if not table:
            return False
        walked[pack] = table
    starts = {o for _, o, _, _ in table}
    data_end = min(starts, default=0) + sum(n for _, _, n, _ in table)
    ok = True
    for offset, block_id, length in blobs:
        if offset not in starts or offset + length > data_end:
            report.errors.append(
                f"index entry {block_id.hex()} points outside the blobs of pack {pack}"
            )
            ok = False
    return ok


def _read_data(
    repo: Repository,
    report: VerifyReport,
    percent: float,
    seed: int | None,
    bad_packs: set[str],
    bad_ids: set[bytes],
    walked: dict[str, list[tuple[bytes, int, int, int]]],
) -> None:
    packs = sorted(set(repo.index.packs()) - bad_packs)
    if percent < 100 and packs:
        rnd = random.Random(seed)
        k = max(1, round(len(packs) * percent / 100))
        packs = sorted(rnd.sample(packs, k))
    known = {(c.pack, c.offset) for c in repo.damaged.copies}
    known_packs = {pack for pack, _ in known}
    for pack in packs:
        report.packs_read += 1
        found: list[DamagedCopy] = []
        try:
            # Ids from the pack's own table: a flipped bit may be in a frame's id.
            table = walked.get(pack) or read_trailer(repo.store, pack)
            ids = {o: i for i, o, _, _ in table}
            frames = (
                _walked_frames(repo, pack, table)
                if pack in walked
                else iter_pack_frames(repo.store, pack)
            )
            for offset, frame in frames:
                if (pack, offset) in known:
                    continue  # set aside already; its pack's checksum fails because of it
                report.blobs_read += 1
                report.bytes_read += len(frame)
                block_id = ids.get(offset, bytes(frame[:16]))
                try:
                    repo.decode_frame(block_id, frame)
                except IntegrityError as exc:
                    report.errors.append(f"pack {pack}: {exc}")
                    bad_ids.add(block_id)
                    found.append(DamagedCopy(block_id, pack, offset, len(frame)))
        except IntegrityError as exc:
            # Trailer or whole-file checksum: every blob was still checked one by one
            # above, so only the blobs that failed count against points. A pack with a
            # recorded damaged copy cannot match its name; that is no news.
            if pack not in known_packs or found:
                report.errors.append(str(exc))
        repo.record_damage(found)


def _walked_frames(
    repo: Repository, pack: str, table: list[tuple[bytes, int, int, int]]
) -> Iterator[tuple[int, bytes]]:
    """The frames of a pack whose trailer is damaged (reported already), one at a time."""
    reader = PackReader(repo.store, pack)
    for _, offset, length, _ in table:
        yield offset, reader.read(offset, length)


def _check_points(
    repo: Repository, report: VerifyReport, bad_packs: set[str], bad_ids: set[bytes]
) -> None:
    """Every point's blocks against the index: one merge join of all their ids, sorted
    on disk, with the index in id order (hcbak/repo/usage.py), instead of a lookup per
    block (minutes at 10 M blocks). It yields the few ids that are not indexed or whose
    indexed copy is in a damaged pack (none in a healthy repository); only then are the
    points read again to count them per point."""
    set_aside = repo.damaged.ids()
    order = repo.point_ids()
    why: dict[str, str] = {}
    readable: list[str] = []
    with referenced_sorter(repo.scratch_folder) as referenced:
        for pid in order:
            report.points += 1
            try:
                point = repo.load_point(pid)
            except (IntegrityError, RepoError) as exc:
                why[pid] = f"point {pid}: manifest unreadable: {exc}"
                continue
            readable.append(pid)
            for disk in point.disks:
                referenced.add(disk.block_map.ids())
        usage = join(repo, referenced, None, bad_packs)
    missing_ids = usage.not_indexed - set_aside
    damaged_ids = (usage.not_indexed & set_aside) | usage.in_watched | bad_ids
    if missing_ids or damaged_ids:
        for pid in readable:
            why.update(_count_lost(repo, pid, missing_ids, damaged_ids))
    affected = [pid for pid in order if pid in why]
    report.errors += [why[pid] for pid in affected]
    report.affected_points = affected


def _count_lost(
    repo: Repository, pid: str, missing_ids: set[bytes], damaged_ids: set[bytes]
) -> dict[str, str]:
    """{pid: message} when the point references a missing or damaged block."""
    try:
        point = repo.load_point(pid)
    except (IntegrityError, RepoError) as exc:  # damaged since the first read
        return {pid: f"point {pid}: manifest unreadable: {exc}"}
    missing = damaged = 0
    for disk in point.disks:
        for block_id in disk.block_map.ids():
            if block_id in missing_ids:
                missing += 1
            elif block_id in damaged_ids:
                damaged += 1
    if not missing and not damaged:
        return {}
    return {
        pid: f"point {pid} ({point.vm_name} {point.created:%Y-%m-%d %H:%M}): "
        f"{missing} blocks not indexed, {damaged} blocks damaged"
    }
