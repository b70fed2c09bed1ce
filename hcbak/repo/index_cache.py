"""The local index cache: the repository's index as sorted runs in this host's state dir.

Why: loading every index segment into a hash table costs ~40 bytes of memory and ~5 us
per block on every open (440 MiB and a minute at 10 M blocks). The cache keeps the same
entries as sorted runs on local disk (hcbak/repo/index_runs.py): an open reads only the
segments added since the last open, merges them into the runs, and looks blocks up by
binary search; memory holds a fence (0.06 bytes per block), the pack table, and the
blocks this run wrote.

Safety (docs/format.md, "Index cache"): the cache is derived and never trusted over the
repository. Its manifest names the repository id and the exact segments it covers; a
cache that covers a segment the repository no longer has (prune, repair) is rebuilt
from the segments. Every run carries an xxh3-128 checksum, is named by it and is
checked at every open; a damaged one is rebuilt, never used. Run files are written
under temp names, fsynced and renamed, and the manifest is replaced last (atomically):
a kill at any point leaves the old cache or the new one. Concurrent openers on this
host take a lock file in turns (flock); the repository itself is never written.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator
from heapq import merge as heap_merge
from pathlib import Path
from typing import Any, BinaryIO

import xxhash

from hcbak.errors import IntegrityError
from hcbak.fsio import write_atomic
from hcbak.repo import fsio
from hcbak.repo.extsort import RecordSorter
from hcbak.repo.index import SEG_ENTRY, CompactIndex, Location, SegmentEntry
from hcbak.repo.index_runs import (
    ENTRY,
    Run,
    RunDamagedError,
    RunWriter,
    check_digest,
    merge,
    merged_packs,
)

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
MANIFEST = "manifest"
LOCK = "lock"
RUN_SUFFIX = ".run"
TMP_PREFIX = ".tmp-"
_RUN_NAME = re.compile(r"^[0-9a-f]{32}\.run$")
# Runs are merged while the older of the last two is at most this many times bigger
# than the newer: a run's entries are rewritten ~log_4(N / new) times over its life.
MERGE_RATIO = 4
SORT_IN_MEMORY = 200_000  # more new entries than this are sorted in buckets on disk
ITEMS_IN_MEMORY = 200_000  # items(): smaller runs than the largest, merged in memory

# (segment id) -> (pack ids, raw SEG_ENTRY records) of a checked segment; raises
# IntegrityError when it fails its checks.
SegmentReader = Callable[[str], tuple[list[str], bytes]]


def _phase(name: str) -> None:
    """Crash tests replace this to stop a merge at a known point."""


class IndexCache:
    """The cache folder of one repository: `<state dir>/index-cache/<repo id>/`."""

    def __init__(self, base: Path, repo_id: str) -> None:
        self.repo_id = repo_id
        self.folder = Path(base) / repo_id

    def load(
        self, segments: list[str], read: SegmentReader, skip: set[tuple[bytes, str]]
    ) -> tuple[CachedIndex, dict[str, str]]:
        """The index over `segments`, updating the cache; and the new segments that
        failed their checks (id -> why). Raises OSError when the cache cannot be
        written (the caller then loads the segments into memory as before)."""
        fsio.make_private_dir(self.folder, parents=True)  # ids and layout: this user's
        lock_fd = fsio.open_private(self.folder / LOCK, os.O_RDWR)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            return self._load_locked(segments, read, skip)
        finally:
            os.close(lock_fd)  # releases the flock

    def _load_locked(
        self, segments: list[str], read: SegmentReader, skip: set[tuple[bytes, str]]
    ) -> tuple[CachedIndex, dict[str, str]]:
        current = set(segments)
        manifest = self._read_manifest()
        runs: list[_OpenRun] = []
        covered: set[str] = set()
        if manifest is not None and set(manifest["segments"]) <= current:
            try:
                runs = [self._open_run(name) for name in manifest["runs"]]
                covered = set(manifest["segments"])
            except (RunDamagedError, OSError) as exc:
                log.warning("index cache %s is damaged (%s): rebuilding it", self.folder, exc)
                runs = []
        else:
            manifest = None  # another segment list (prune, repair): rebuilt from scratch
        new = sorted(current - covered)
        bad: dict[str, str] = {}
        if new or manifest is None or (not covered and manifest["segments"]):
            run, good = self._run_from_segments(new, read, bad)
            if run is not None:
                runs.append(run)
            runs = self._merge_tail(runs)
            self._write_manifest(sorted(covered | good), [r.name for r in runs])
            self._collect_garbage({r.name for r in runs})
        return CachedIndex(runs, skip), bad

    # --- the manifest ---------------------------------------------------------------
    def _read_manifest(self) -> dict[str, Any] | None:
        try:
            data = (self.folder / MANIFEST).read_bytes()
            doc = json.loads(data)
            check = doc.pop("check")
            body = json.dumps(doc, sort_keys=True).encode()
            if check != xxhash.xxh3_128_hexdigest(body):
                raise ValueError("checksum mismatch")
            if doc["format"] != CACHE_FORMAT or doc["repo_id"] != self.repo_id:
                raise ValueError("another repository or format")
            if not isinstance(doc["segments"], list) or not isinstance(doc["runs"], list):
                raise ValueError("malformed")
            if not all(isinstance(r, str) and _RUN_NAME.match(r) for r in doc["runs"]):
                raise ValueError("a run name that is not a checksum")
            checked: dict[str, Any] = doc
            return checked
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("index cache manifest in %s is unusable (%s): rebuilding", self.folder, exc)
            return None

    def _write_manifest(self, segments: list[str], runs: list[str]) -> None:
        doc: dict[str, object] = {
            "format": CACHE_FORMAT,
            "repo_id": self.repo_id,
            "segments": segments,
            "runs": runs,
        }
        body = json.dumps(doc, sort_keys=True).encode()
        doc["check"] = xxhash.xxh3_128_hexdigest(body)
        _phase("manifest")
        write_atomic(self.folder / MANIFEST, json.dumps(doc, sort_keys=True).encode())

    def _collect_garbage(self, keep: set[str]) -> None:
        for p in self.folder.iterdir():
            if p.name in (MANIFEST, LOCK) or p.name in keep:
                continue
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)

    # --- runs -----------------------------------------------------------------------
    def _open_run(self, name: str) -> _OpenRun:
        fh = open(self.folder / name, "rb", buffering=0)  # noqa: SIM115 - kept while in use
        try:
            fd = os.fstat(fh.fileno())
            size = fd.st_size

            def read(offset: int, length: int) -> bytes:
                return os.pread(fh.fileno(), length, offset)

            digest = check_digest(read, size)
            if digest.hex() + RUN_SUFFIX != name:
                raise RunDamagedError(f"index cache run {name} does not match its name")
            return _OpenRun(name, fh, Run(read, size))
        except BaseException:
            fh.close()
            raise

    def _write_run(self, packs: list[bytes], n: int, fill: Callable[[RunWriter], None]) -> _OpenRun:
        tmp = self.folder / f"{TMP_PREFIX}run-{os.urandom(6).hex()}"
        try:
            with _create(tmp) as fh:
                writer = RunWriter(fh, packs, n)
                fill(writer)
                digest = writer.finish()
                fh.flush()
                _phase("run-partial")  # all bytes written, not yet durable nor named
                os.fsync(fh.fileno())
            name = digest.hex() + RUN_SUFFIX
            os.replace(tmp, self.folder / name)
            fsio.fsync_dir(self.folder)
        finally:
            if tmp.exists():
                tmp.unlink()
        _phase("run-written")
        return self._open_run(name)

    def _merge_tail(self, runs: list[_OpenRun]) -> list[_OpenRun]:
        """Merge the newest runs while they are of comparable size (see MERGE_RATIO)."""
        while len(runs) >= 2 and runs[-2].run.n <= MERGE_RATIO * max(runs[-1].run.n, 1):
            older, newer = runs[-2].run, runs[-1].run
            table, renumber = merged_packs(older.packs_raw(), newer.packs_raw())
            _phase("merge")

            def fill(w: RunWriter, a: Run = older, b: Run = newer, r: list[int] = renumber) -> None:
                merge(w, a.pieces(), b.pieces(), r)

            merged = self._write_run(table, older.n + newer.n, fill)
            runs = [*runs[:-2], merged]
        return runs

    def _run_from_segments(
        self, new: list[str], read: SegmentReader, bad: dict[str, str]
    ) -> tuple[_OpenRun | None, set[str]]:
        """One run of the entries of the `new` segments (the good ones, returned)."""
        table: list[bytes] = []
        number: dict[str, int] = {}
        good: set[str] = set()
        sorter = RecordSorter(self.folder, ENTRY.size, in_memory=SORT_IN_MEMORY)
        try:
            for seg in new:
                try:
                    packs, raw = read(seg)
                except IntegrityError as exc:
                    bad[seg] = str(exc)
                    continue
                good.add(seg)
                local = []
                for p in packs:
                    if p not in number:
                        number[p] = len(table)
                        table.append(bytes.fromhex(p))
                    local.append(number[p])
                pack = ENTRY.pack
                sorter.add(
                    [pack(i, local[p], o, ln) for i, p, o, ln, _plain in SEG_ENTRY.iter_unpack(raw)]
                )
            if sorter.count == 0:
                return None, good

            def fill(writer: RunWriter) -> None:
                for chunk in sorter.chunks():
                    writer.write(chunk)

            return self._write_run(table, sorter.count, fill), good
        finally:
            sorter.close()

    def check_segments(self, segments: list[str], read: SegmentReader) -> dict[str, str]:
        """Every segment's checks, one at a time (for verify and prune): the cache was
        built from segments that passed them once, not from their current bytes."""
        bad = {}
        for seg in segments:
            try:
                read(seg)
            except IntegrityError as exc:
                bad[seg] = str(exc)
        return bad


class _OpenRun:
    def __init__(self, name: str, fh: object, run: Run) -> None:
        self.name, self.fh, self.run = name, fh, run


def _create(path: Path) -> BinaryIO:
    """A new file, mode 0600 whatever the umask (the state dir is private)."""
    return os.fdopen(fsio.open_private(path, os.O_WRONLY | os.O_EXCL), "wb")


class CachedIndex:
    """CompactIndex's interface over the cache's runs plus the blocks added in this
    process (a small CompactIndex). Damaged copies (`skip`) count as absent."""

    def __init__(self, runs: list[_OpenRun], skip: set[tuple[bytes, str]]) -> None:
        self._open = runs  # keeps the files open
        # Oldest (largest) first: most hits are there, so a hit usually costs one read.
        self._runs = [r.run for r in runs]
        self._delta = CompactIndex()
        self._skip = skip
        self._skip_ids = {i for i, _ in skip}
        self._len: int | None = None

    def __len__(self) -> int:
        if self._len is None:
            self._len = sum(1 for _ in self.items())
        return self._len

    def add(self, entries: list[SegmentEntry], *, replace: bool = False) -> None:
        """Blocks written in this process: they win over the runs' copies."""
        self._delta.add(entries, replace=True)
        self._len = None

    def lookup(self, block_id: bytes) -> Location | None:
        if len(self._delta):
            loc = self._delta.lookup(block_id)
            if loc is not None:
                return loc
        for run in self._runs:
            for p, o, n in run.find(block_id):
                pack = run.pack_name(p)
                if block_id in self._skip_ids and (block_id, pack) in self._skip:
                    continue
                return Location(pack, o, n)
        return None

    def contains(self, block_id: bytes) -> bool:
        return self.lookup(block_id) is not None

    def items(self) -> Iterator[tuple[bytes, Location]]:
        """Every indexed id once, with the location `lookup` gives, in id order;
        streamed from the runs (memory: one read piece per run)."""
        if len(self._runs) == 1 and not len(self._delta) and not self._skip:
            yield from _unique(self._runs[0])  # the usual case after an open: no merge
            return
        delta = [
            (block_id, -1, loc.pack, loc.offset, loc.length)
            for block_id, loc in self._delta.items()
        ]
        big, rest = (self._runs[0], self._runs[1:]) if self._runs else (None, [])
        if big is not None and sum(r.n for r in rest) + len(delta) <= ITEMS_IN_MEMORY:
            # The usual case: one large run and small ones (recent backups): the small
            # ones are sorted in memory and merged into the large one as it streams.
            # Sorted by (id, rank) only, and stably: a run's copies of one id keep the
            # run's own order (lookup's), not the order of their pack names.
            small = delta + [e for rank, run in enumerate(rest, 1) for e in _located(rank, run)]
            merged = _merge_small(big, sorted(small, key=_id_and_rank))
        else:
            # One rank per stream: a run's copies of one id keep the run's order here too.
            streams = [_located(rank, run) for rank, run in enumerate(self._runs)]
            merged = heap_merge(iter(sorted(delta)), *streams)
        last = None
        skip, skip_ids = self._skip, self._skip_ids
        for block_id, rank, pack, offset, length in merged:
            if block_id == last:
                continue
            if rank >= 0 and block_id in skip_ids and (block_id, pack) in skip:
                continue
            last = block_id
            yield block_id, Location(pack, offset, length)

    def items_by_id(self) -> Iterator[tuple[bytes, Location]]:
        """`items` is in id order already."""
        return self.items()

    def packs(self) -> list[str]:
        """Names of packs that hold at least one indexed blob."""
        return sorted({loc.pack for _, loc in self.items()})


def _unique(run: Run) -> Iterator[tuple[bytes, Location]]:
    name, last = run.pack_name, None
    for block_id, p, o, n in run.entries():
        if block_id != last:
            last = block_id
            yield block_id, Location(name(p), o, n)


def _merge_small(
    big: Run, small: list[tuple[bytes, int, str, int, int]]
) -> Iterator[tuple[bytes, int, str, int, int]]:
    """`big`'s entries (rank 0) and the sorted `small` ones, in (id, rank) order."""
    name = big.pack_name
    j, n = 0, len(small)
    head = small[0][:2] if small else None
    for block_id, p, o, ln in big.entries():
        while head is not None and head < (block_id, 0):
            yield small[j]
            j += 1
            head = small[j][:2] if j < n else None
        yield block_id, 0, name(p), o, ln
    yield from small[j:]


def _id_and_rank(entry: tuple[bytes, int, str, int, int]) -> tuple[bytes, int]:
    return entry[0], entry[1]


def _located(rank: int, run: Run) -> Iterator[tuple[bytes, int, str, int, int]]:
    name = run.pack_name
    for block_id, p, o, n in run.entries():
        yield block_id, rank, name(p), o, n
