"""Copy restore points from one repository to another (`hcbak repo copy`, job `copy_to`).

A point keeps its id in every repository it is copied to: DST already holding a point
id means it holds that point, and the point is skipped. For each point DST lacks, only
the blocks DST lacks are sent. Both repositories are used through the Repository API
alone (list/load/save points, has_block/get_block/put_block, flush), so any storage
behind them works.

Keys. Blocks are read from SRC in plaintext (authenticated, decompressed, re-hashed by
get_block) and stored in DST with DST's compression and key, so encrypted -> encrypted
with another passphrase, plain -> encrypted and back all work. When the two repositories
name blocks with the same id function (one was made from a copy of the other's config),
a block's id is the same in both and DST is asked for it by id, without reading SRC.
Otherwise (format v2 keys its block ids; every `repo add` draws its own key) each block
is re-id'd with DST's function and the copied point's block map is rewritten with DST's
ids. To avoid reading every block of an incremental point only to find DST has it, the
copy pairs the point with the newest earlier point of the same VM present in both
repositories (its "base", usually the point copied just before): a block at the same
position with the same SRC id as in the base has the base's DST id there.

Commit order, as a backup's (docs/reliability.md): every block of the point is put and
DST flushed (packs, then index segments, durable) -> every block the rewritten block
map references is checked present in DST's index and a sample of them read back and
decoded -> the manifest is written (write-once) -> read back and compared. A crash at
any moment leaves at worst unreferenced packs in DST (prune removes them); the next copy
finds the point absent and sends it again, deduplicating what was already durable.

Memory is bounded: one block per copy thread, the block maps of the point being copied
and of its base, and a bounded cache of SRC -> DST ids.

The selection, the per-point records and the report are in engine/copy_report.py
(pure logic); engine/copy_to.py runs a job's `copy_to` through `copy_between`.
"""

from __future__ import annotations

import logging
import random
import threading
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from hcbak.engine.copy_report import (  # re-exported: the copy's public records (__all__)
    COPIED,
    FAILED,
    PLANNED,
    PRESENT,
    VERIFY_SAMPLE,
    CopyEvent,
    CopyProgress,
    CopyReport,
    CopySelection,
    PointCopy,
    choose,
    no_progress,
)
from hcbak.errors import (
    ExitCode,
    HcbakError,
    IntegrityError,
    LockedError,
    RepoError,
    UsageError,
)
from hcbak.repo.blockmap import ZERO_BLOCK, BlockMap
from hcbak.repo.points import DiskImage, Point, PointSummary
from hcbak.repo.repository import Repository

if TYPE_CHECKING:
    from hcbak.config import Config, RepoConfig

log = logging.getLogger("hcbak.engine.copy")

__all__ = [
    "COPIED",
    "FAILED",
    "PLANNED",
    "PRESENT",
    "VERIFY_SAMPLE",
    "CopyEvent",
    "CopyProgress",
    "CopyReport",
    "CopySelection",
    "PointCopy",
    "choose",
    "copy_between",
    "copy_points",
    "no_progress",
]

COPY_THREADS = 2  # get_block and put_block release the GIL while they (de)compress/crypt
ID_CACHE = 65536  # SRC -> DST ids remembered across points (~10 MiB at most)
_PROBES = (b"hcbak copy: same block ids?", b"\x00hcbak copy probe\xff" * 64)


def copy_points(
    src: Repository,
    dst: Repository,
    selection: CopySelection,
    progress: CopyProgress | None = None,
    *,
    dry_run: bool = False,
    names: tuple[str, str] = ("SRC", "DST"),
) -> CopyReport:
    """Copy the selected SRC points DST lacks, oldest first; see the module docstring.

    A point that fails (a damaged block in SRC, a write error in DST) is reported and
    the copy goes on with the next; Ctrl-C stops at the next block and the report says
    "interrupted" (points committed so far stay). The caller holds DST's lock (shared,
    as a backup) and SRC's (shared, as a restore)."""
    say = progress or no_progress
    report = CopyReport(names[0], names[1], dry_run=dry_run)
    in_src = src.list_points()
    in_dst = dst.list_points()  # headers only: what is there, and the bases of re-ids
    summaries = choose(in_src, selection, in_dst)
    for why in sorted(src.unreadable_points.values()):
        report.warnings.append(f"{names[0]}: {why}: not copied")
    present = set(dst.point_ids())
    report.points = [PointCopy(s.id, s.vm_name, s.job, s.created) for s in summaries]
    for item in report.points:
        if item.id in present:
            item.status = PRESENT
    if dry_run:
        return report
    report.same_ids = all(src.block_id(p) == dst.block_id(p) for p in _PROBES)
    copier = _Copier(src, dst, report.same_ids, say, names[0])
    copier.bases_from(in_dst, {s.id for s in in_src}, summaries)
    try:
        for item, summary in zip(report.points, summaries, strict=True):
            if item.status == PRESENT:
                say(CopyEvent("point_present", item))
                continue
            copier.copy_one(item, summary)
    except KeyboardInterrupt:
        report.status, report.reason = "interrupted", "interrupted by the user"
        report.error_code = ExitCode.INTERRUPTED
    except LockedError as exc:  # DST's lease lost: nothing more can be committed
        report.status, report.reason, report.error_code = "locked", exc.one_line(), exc.exit_code
    return report


class _Copier:
    """The copy of points one by one, with what earlier points taught about ids."""

    def __init__(
        self, src: Repository, dst: Repository, same_ids: bool, say: CopyProgress, src_name: str
    ) -> None:
        self.src, self.dst, self.same_ids, self.say = src, dst, same_ids, say
        self.src_name = src_name
        self.ids: OrderedDict[bytes, bytes] = OrderedDict()  # SRC id -> DST id (LRU)
        self.ids_lock = threading.Lock()
        # Per VM uuid: the newest point in both repositories so far, as (created,
        # point id), and once loaded the pair (SRC point, DST point).
        self.base_ref: dict[str, tuple[datetime, str]] = {}
        self.base_pair: dict[str, tuple[Point, Point]] = {}

    def bases_from(
        self, in_dst: list[PointSummary], src_ids: set[str], wanted: list[PointSummary]
    ) -> None:
        """Remember, per VM, the newest point both repositories hold: its block maps in
        SRC and in DST translate most ids of the VM's next point."""
        if self.same_ids:
            return
        vms = {s.vm_uuid for s in wanted}
        for s in in_dst:  # oldest first: the newest wins
            if s.vm_uuid in vms and s.id in src_ids:
                self.base_ref[s.vm_uuid] = (s.created, s.id)

    def copy_one(self, item: PointCopy, summary: PointSummary) -> None:
        started = datetime.now(UTC)
        try:
            self._copy(item, summary)
        except (KeyboardInterrupt, LockedError):
            item.status, item.reason = FAILED, "stopped before its commit"
            item.error_code = ExitCode.INTERRUPTED
            raise
        except HcbakError as exc:
            item.status, item.reason, item.error_code = FAILED, exc.one_line(), exc.exit_code
        except OSError as exc:
            from hcbak.errors import describe_os_error

            item.status, item.reason = FAILED, describe_os_error(exc)
            item.error_code = ExitCode.FAILED
        finally:
            item.duration = (datetime.now(UTC) - started).total_seconds()
        self.say(CopyEvent("point_done", item, message=item.reason))

    def _copy(self, item: PointCopy, summary: PointSummary) -> None:
        point = self.src.load_point(item.id)
        base = self._base(point)
        disks: list[DiskImage] = []
        total = sum(len(d.block_map) * d.block_size for d in point.disks)
        self.say(CopyEvent("point_start", item, total=total))
        state = _PointState(item, total, self.say)
        for disk in point.disks:
            base_disk = _matching_disks(base, disk)
            new_map = self._copy_disk(disk, base_disk, state)
            disks.append(replace(disk, block_map=new_map))
        copied = replace(point, disks=disks)
        self.dst.flush()  # packs, then index segments: durable before the manifest
        item.blocks_verified = self._check_in_dst(copied, state.sent)
        committed_here = self._commit(copied)
        self._check_committed(copied)
        item.status = COPIED if committed_here else PRESENT
        if summary.vm_uuid:
            self.base_ref[summary.vm_uuid] = (summary.created, point.id)
            self.base_pair[summary.vm_uuid] = (point, copied)

    def _commit(self, point: Point) -> bool:
        """Write the manifest (write-once); False when another copy into DST committed
        the same point meanwhile (both hold DST's shared lock)."""
        try:
            self.dst.save_point(point)
        except RepoError:
            if point.id not in self.dst.point_ids():
                raise
            return False
        return True

    def _base(self, point: Point) -> tuple[Point, Point] | None:
        """SRC and DST versions of the newest earlier point of this VM both hold."""
        if self.same_ids:
            return None
        ref = self.base_ref.get(point.vm_uuid)
        if ref is None or ref[0] > point.created:
            return None
        pair = self.base_pair.get(point.vm_uuid)
        if pair is None or pair[0].id != ref[1]:
            try:
                pair = (self.src.load_point(ref[1]), self.dst.load_point(ref[1]))
            except HcbakError as exc:  # only a shortcut: every block is read instead
                log.info("base point %s unusable for the copy: %s", ref[1], exc)
                return None
            self.base_pair[point.vm_uuid] = pair
        return pair

    def _copy_disk(
        self,
        disk: DiskImage,
        base: tuple[BlockMap, BlockMap] | None,
        state: _PointState,
    ) -> BlockMap:
        """Send the disk's blocks DST lacks; returns its block map in DST's ids."""
        src_map = disk.block_map
        new_map = BlockMap(len(src_map))
        todo = iter(range(len(src_map)))
        pick = threading.Lock()
        stop = threading.Event()

        def work() -> None:
            while not stop.is_set():
                with pick:
                    i = next(todo, None)
                if i is None:
                    return
                src_id = src_map.get(i)
                if src_id != ZERO_BLOCK:
                    dst_id = self._send(src_id, _at(base, i, src_id), state)
                    with pick:
                        new_map.set(i, dst_id)
                state.advance(disk.block_size)

        with ThreadPoolExecutor(COPY_THREADS, thread_name_prefix="hcbak-copy") as pool:
            workers = [pool.submit(work) for _ in range(COPY_THREADS)]
            try:
                for done in workers:
                    done.result()
            finally:
                stop.set()  # an error or Ctrl-C: the other thread stops at its next block
        return new_map

    def _send(self, src_id: bytes, hint: bytes | None, state: _PointState) -> bytes:
        """Make sure DST holds the block; returns its DST id."""
        dst = self.dst
        known = src_id if self.same_ids else (hint or self._cached(src_id))
        if known is not None and dst.has_block(known):
            state.count(read=0, sent=0, stored=0, dst_id=None)
            return known
        data = self._read(src_id)
        dst_id = src_id if self.same_ids else dst.block_id(data)
        stored = dst.put_block(dst_id, data)
        if not self.same_ids:
            with self.ids_lock:
                self.ids[src_id] = dst_id
                if len(self.ids) > ID_CACHE:
                    self.ids.popitem(last=False)
        state.count(read=len(data), sent=1 if stored else 0, stored=stored, dst_id=dst_id)
        return dst_id

    def _read(self, src_id: bytes) -> bytes:
        try:
            return self.src.get_block(src_id)
        except IntegrityError as exc:
            raise IntegrityError(
                f"{exc.message} in the source repository {self.src_name}",
                hint=f"`hcbak repo verify {self.src_name}` names every damaged point",
            ) from None

    def _cached(self, src_id: bytes) -> bytes | None:
        with self.ids_lock:
            dst_id = self.ids.get(src_id)
            if dst_id is not None:
                self.ids.move_to_end(src_id)
            return dst_id

    def _check_in_dst(self, point: Point, sent: list[bytes]) -> int:
        """Before the commit: every block the point references is in DST's index, and a
        sample (blocks sent now first) reads back, authenticates and re-hashes."""
        missing = 0
        seen: set[bytes] = set()
        for disk in point.disks:
            for block_id in disk.block_map.ids():
                if block_id not in seen and not self.dst.has_block(block_id):
                    missing += 1
                seen.add(block_id)
                if len(seen) > ID_CACHE:
                    seen.clear()  # only saves repeated look-ups; bounded
        if missing:
            raise IntegrityError(
                f"point {point.id}: {missing} block(s) are not in the destination after "
                "the copy; not committed"
            )
        rnd = random.Random(point.id)
        sample = rnd.sample(sent, min(VERIFY_SAMPLE, len(sent)))
        if len(sample) < VERIFY_SAMPLE:
            sample += _sample_ids(point, VERIFY_SAMPLE - len(sample), rnd)
        for block_id in sample:
            self.dst.get_block(block_id)  # IntegrityError: not committed
        return len(sample)

    def _check_committed(self, point: Point) -> None:
        """After the commit: DST's manifest decodes and names the same blocks."""
        stored = self.dst.load_point(point.id)
        same = len(stored.disks) == len(point.disks) and all(
            a.block_map == b.block_map  # chunk by chunk: no 16 B/block copy
            for a, b in zip(stored.disks, point.disks, strict=True)
        )
        if not same:
            raise IntegrityError(f"point {point.id}: the destination's manifest differs")


class _PointState:
    """Counters of the point being copied (shared by the copy threads)."""

    def __init__(self, item: PointCopy, total: int, say: CopyProgress) -> None:
        self.item, self.total, self.say = item, total, say
        self.lock = threading.Lock()
        self.done = 0
        self.sent: list[bytes] = []  # DST ids stored by this copy: the sample comes from them
        self.last_said = 0

    def count(self, *, read: int, sent: int, stored: int, dst_id: bytes | None) -> None:
        with self.lock:
            item = self.item
            item.blocks += 1
            item.blocks_read += 1 if read else 0
            item.bytes_read += read
            item.blocks_sent += sent
            item.bytes_sent += stored
            if sent and dst_id is not None and len(self.sent) < ID_CACHE:
                self.sent.append(dst_id)

    def advance(self, nbytes: int) -> None:
        with self.lock:
            self.done = min(self.total, self.done + nbytes)
            due = self.done - self.last_said >= 8 << 20 or self.done == self.total
            if due:
                self.last_said = self.done
        if due:
            self.say(CopyEvent("point_progress", self.item, done=self.done, total=self.total))


def _matching_disks(
    base: tuple[Point, Point] | None, disk: DiskImage
) -> tuple[BlockMap, BlockMap] | None:
    """The base point's SRC and DST block maps of the same disk, if it had it."""
    if base is None:
        return None
    src_point, dst_point = base
    for a, b in zip(src_point.disks, dst_point.disks, strict=False):
        if a.uuid == disk.uuid and a.block_size == disk.block_size:
            return a.block_map, b.block_map
    return None


def _at(base: tuple[BlockMap, BlockMap] | None, i: int, src_id: bytes) -> bytes | None:
    """DST's id of block i when the base has the same SRC block at the same place."""
    if base is None or i >= len(base[0]) or i >= len(base[1]):
        return None
    if base[0].get(i) != src_id:
        return None
    dst_id = base[1].get(i)
    return dst_id if dst_id != ZERO_BLOCK else None


def _sample_ids(point: Point, k: int, rnd: random.Random) -> list[bytes]:
    """Up to k block ids of the point, spread over it (reservoir sampling)."""
    out: list[bytes] = []
    for n, block_id in enumerate(_all_ids(point.disks)):
        if len(out) < k:
            out.append(block_id)
        else:
            j = rnd.randrange(n + 1)
            if j < k:
                out[j] = block_id
    return out


def _all_ids(disks: Iterable[DiskImage]) -> Iterable[bytes]:
    for disk in disks:
        yield from disk.block_map.ids()


def copy_between(
    config: Config,
    src_name: str,
    dst_name: str,
    selection: CopySelection,
    progress: CopyProgress | None = None,
    *,
    dry_run: bool = False,
    state_dir: Path | None = None,
    lock_wait: float = 0.0,
) -> CopyReport:
    """Open two configured repositories and copy between them: SRC with a shared lock
    as a restore takes (or none where it cannot be written: a read-only SRC), DST with
    a shared lock as a backup takes, so a prune of either waits. A repository that
    cannot be opened ends the copy with its error's code (5 locked, 6 damaged, ...)."""
    from hcbak.engine.repo_open import open_configured_repo

    say = progress or no_progress
    report = CopyReport(src_name, dst_name, dry_run=dry_run)
    src_cfg, dst_cfg = config.repo(src_name), config.repo(dst_name)
    if src_name == dst_name:
        raise UsageError("copy needs two different repositories")

    def opened(
        cfg: RepoConfig, *, read_only: bool, command: str
    ) -> AbstractContextManager[Repository]:
        return open_configured_repo(
            cfg,
            lock="shared",
            lock_wait=lock_wait,
            command=command,
            read_only_ok=read_only,
            state_dir=state_dir,
        )

    try:
        with (
            opened(src_cfg, read_only=True, command=f"repo copy to {dst_name}") as src,
            opened(dst_cfg, read_only=dry_run, command=f"repo copy from {src_name}") as dst,
        ):
            if src.config.repo_id == dst.config.repo_id:
                raise UsageError(f"{src_name} and {dst_name} are the same repository")
            for repo, name in ((src, src_name), (dst, dst_name)):
                if repo.unlocked_reason:
                    say(CopyEvent("warning", message=f"{name}: read without a lock "
                                  f"({repo.unlocked_reason})"))  # fmt: skip
            return copy_points(
                src, dst, selection, say, dry_run=dry_run, names=(src_name, dst_name)
            )
    except UsageError:
        raise
    except KeyboardInterrupt:
        report.status, report.reason = "interrupted", "interrupted by the user"
        report.error_code = ExitCode.INTERRUPTED
    except HcbakError as exc:
        report.status = "locked" if isinstance(exc, LockedError) else "failed"
        report.reason, report.error_code = exc.one_line(), exc.exit_code
    except OSError as exc:
        from hcbak.errors import describe_os_error

        report.status, report.reason = "failed", describe_os_error(exc)
        report.error_code = ExitCode.FAILED
    return report
