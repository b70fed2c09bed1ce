"""The block store: put/get blocks, the pack-writer pool, the index, flush.

Thread model (an engine calls `put_block` from many threads): hashing, compression and
encryption run in the caller's thread (xxhash, lz4, zstd and AES-GCM release the GIL);
only the append to the open pack and the bookkeeping run under one lock. An in-memory
set of ids being written prevents two threads from storing the same block twice.

Commit order (docs/format.md, "Crash safety"): packs -> index segments -> manifest.
A crash at any moment leaves at worst packs or index entries no point references,
which `prune` removes; a point is visible only once all its data is durable. Every
byte goes through the repository's ObjectStore (hcbak/repo/storage).
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hcbak.errors import IntegrityError, NoSpaceError, RepoError
from hcbak.repo import fsio
from hcbak.repo.blockmap import ZERO_BLOCK
from hcbak.repo.codec import Envelope, codec_id, compress, decompress
from hcbak.repo.crypto import KeyMaterial, Sealer
from hcbak.repo.damaged import DamagedCopy, DamagedSet, load_records, write_record
from hcbak.repo.ids import BlockIdFn
from hcbak.repo.index import (
    CompactIndex,
    Location,
    SegmentEntry,
    decode_checked_segment,
    list_segments,
    read_segment_file,
    write_segment,
)
from hcbak.repo.index_cache import CachedIndex, IndexCache
from hcbak.repo.index_runs import RunDamagedError
from hcbak.repo.pack import (
    FLAG_ENCRYPTED,
    PackWriter,
    check_blob_sealing,
    frame_parts,
    pack_key,
    parse_blob,
)
from hcbak.repo.packread import FrameReader, MissingPackError
from hcbak.repo.settings import RepoSettings
from hcbak.repo.storage.base import ObjectStore

PACK_TARGET = 64 * 1024 * 1024
# Index segments are written at every flush and after this many packs, so a long
# backup does not leave gigabytes of data unindexed (nor creates one file per pack).
INDEX_EVERY_PACKS = 16
# Full packs being sealed (fsync, checksum, commit) in the background at once. The
# threads that fill packs go on compressing meanwhile; past this many, the thread that
# filled a pack seals it itself, which bounds the dirty data a slow disk can pile up.
SEAL_BEHIND = 2
# Packs filled at once. Copying a block into the page cache is most of an append and
# the filesystem serialises writes to one file, so two cores copy into two packs; more
# writers would only leave more partly filled packs at every flush.
WRITERS = 2


class BlockStore:
    """Blocks of an open repository (Repository adds its points); thread safe."""

    def __init__(
        self,
        store: ObjectStore,
        settings: RepoSettings,
        material: KeyMaterial | None,
        block_ids: BlockIdFn,
        *,
        pack_target: int = PACK_TARGET,
        index_cache: IndexCache | None = None,
        preload: bool = True,
    ) -> None:
        self.store = store
        self.config = settings
        self._block_id = block_ids
        self.sealer = Sealer(material.master_key if material else None)
        self.envelope = Envelope(self.sealer)
        self._codec = codec_id(settings.compression)
        self.pack_target = pack_target
        self._cv = threading.Condition()
        self._inflight: set[bytes] = set()
        self._idle: list[PackWriter] = []  # open packs no thread is appending to
        self._busy: set[PackWriter] = set()  # open packs a thread is appending to
        self._seal_when_done: set[PackWriter] = set()  # busy packs a flush must seal
        self._drop_when_done: set[PackWriter] = set()  # busy packs a full disk dropped
        self._open: dict[bytes, tuple[PackWriter, int, int]] = {}
        self._new: dict[bytes, Location] = {}
        self._unindexed: list[SegmentEntry] = []
        self._unindexed_packs = 0
        self._finishing: set[PackWriter] = set()  # full packs being sealed by a thread
        # Ids whose write failed (an aborted pack, a failed put). Other threads may have
        # deduplicated against them while in flight, so a point that references one is
        # checked before it is committed (see check_not_lost). A failure costs the
        # VMs whose blocks were lost, never the whole run.
        self._lost: set[bytes] = set()
        self._lost_error: RepoError | None = None  # why: a failed seal, a full disk
        # Ids whose indexed copy a read in this process found damaged (and recorded,
        # see record_damage): they count as absent, so a backup stores them again.
        self._damaged_here: set[bytes] = set()
        self._sealer: ThreadPoolExecutor | None = None
        self._sealing_behind = 0
        self._frames = FrameReader(store, settings.block_size)
        self._index_loader: threading.Thread | None = None
        self._index_cache = index_cache
        self._index: CompactIndex | CachedIndex
        self._loader_start = threading.Lock()
        self._bad_segments: dict[str, str] | None = None
        self.reload_index(preload=preload)

    def reload_index(self, preload: bool = True) -> None:
        """(Re)build the index from the segments in the repository.

        With an index cache (this host's state dir, hcbak/repo/index_cache.py) only
        the segments added since its last update are read; without one the files are
        read here, so a repository whose index cannot be read fails to open as before.
        Checking, decrypting and inserting them (~5 us per block, 13 ms for a 4 GiB
        disk) runs in a helper thread: a backup takes its snapshot and clone meanwhile,
        and the first use of the index waits for it. Without `preload` (commands that
        may not need the index, like listing points) nothing is read until first use.
        """
        if self._index_loader is not None and self._index_loader.ident is not None:
            self._index_loader.join()  # never two loads at once
        store = self.store
        self.segments = list_segments(store)
        # Recorded damaged copies are left out of the index: their ids count as absent.
        self.damaged: DamagedSet = load_records(store, self.envelope)
        self._damaged_here = set()
        self._bad_segments = None
        self._unloaded: dict[str, str] = {}  # segments the load skipped (failed checks)
        skip = self.damaged.keys()
        self._index_failure: BaseException | None = None
        target: Callable[..., None]
        args: tuple[object, ...]
        if self._index_cache is not None:
            target, args = self._load_cached, (list(self.segments), skip)
        else:
            files = [(seg, read_segment_file(store, seg)) for seg in self.segments]
            target, args = self._load_index, (files, skip)
        loader = threading.Thread(target=target, args=args, name="hcbak-index", daemon=True)
        self._index_loader = loader
        if preload:
            loader.start()

    def _read_segment(self, seg: str) -> tuple[list[str], bytes]:
        return decode_checked_segment(seg, read_segment_file(self.store, seg), self.envelope)

    def _load_cached(self, segments: list[str], skip: set[tuple[bytes, str]]) -> None:
        assert self._index_cache is not None
        try:
            self._index, self._unloaded = self._index_cache.load(segments, self._read_segment, skip)
        except (OSError, RunDamagedError):  # no usable cache: in memory, as without one
            try:
                files = [(seg, read_segment_file(self.store, seg)) for seg in segments]
            except BaseException as exc:
                self._index_failure = exc
                return
            self._load_index(files, skip)
        except BaseException as exc:  # raised at first use
            self._index_failure = exc

    def _load_index(self, files: list[tuple[str, bytes]], skip: set[tuple[bytes, str]]) -> None:
        try:
            index = CompactIndex()
            # A damaged segment only costs dedup hits (blocks get stored again) and
            # makes points that need it fail verify; it must not make the repository
            # unusable.
            bad: dict[str, str] = {}
            decoded: list[tuple[list[str], bytes]] = []
            files.reverse()  # popped from the end (each file's bytes freed once decoded)
            while files:
                seg, data = files.pop()
                try:
                    decoded.append(decode_checked_segment(seg, data, self.envelope))
                except IntegrityError as exc:
                    bad[seg] = str(exc)
            # Raw records are 32 bytes each: holding them all briefly lets the table be
            # sized once (no rehash) - the peak at open is ~70 bytes per entry.
            index.reserve(sum(len(raw) for _, raw in decoded) // 32)
            while decoded:
                packs, raw = decoded.pop()
                index.add_segment(packs, raw, skip)
            self._index, self._bad_segments, self._unloaded = index, bad, bad
        except BaseException as exc:  # MemoryError and the like: raised at first use
            self._index_failure = exc

    def _await_index(self) -> None:
        loader = self._index_loader
        if loader is not None:
            with self._loader_start:
                if loader.ident is None:  # not preloaded: load now
                    loader.start()
            loader.join()
            if self._index_failure is not None:
                raise self._index_failure
            self._index_loader = None

    @property
    def index(self) -> CompactIndex | CachedIndex:
        if self._index_loader is not None:
            self._await_index()
        return self._index

    @property
    def scratch_folder(self) -> Path | None:
        """Where big temporary sorts spill (prune): this host's state dir, on local
        disk, beside the index cache; None: the system's temp folder."""
        return self._index_cache.folder.parent if self._index_cache is not None else None

    @property
    def index_incomplete(self) -> bool:
        """Some segment failed its checks when the index was loaded, so its entries are
        missing: a block it alone listed looks absent (repair rebuilds it from the
        packs). Cheap: known from the load (unlike `bad_segments` with a cache)."""
        self._await_index()
        return bool(self._unloaded)

    @property
    def bad_segments(self) -> dict[str, str]:
        """Segments that failed their checks, by id: why. With an index cache, every
        segment is read again here (verify, prune: they read all metadata anyway)."""
        self._await_index()
        if self._bad_segments is None:
            assert self._index_cache is not None
            self._bad_segments = self._index_cache.check_segments(
                list(self.segments), self._read_segment
            )
        return self._bad_segments

    # --- blocks ---------------------------------------------------------------------
    def block_id(self, data: bytes) -> bytes:
        """The 16-byte id of a block's plaintext: keyed BLAKE3 truncated to 128 bits
        (format v2) or XXH3-128 seeded per repository (v1); see hcbak/repo/ids.py."""
        return self._block_id(data)

    def has_block(self, block_id: bytes) -> bool:
        if block_id == ZERO_BLOCK:
            return True
        with self._cv:
            return self._known(block_id)

    def _known(self, block_id: bytes) -> bool:
        if block_id in self._open or block_id in self._new:
            return True
        return block_id not in self._damaged_here and self.index.contains(block_id)

    def put_block(self, block_id: bytes, data: bytes) -> int:
        """Store a block unless present; returns bytes added (0 when deduplicated)."""
        if block_id == ZERO_BLOCK:
            return 0
        with self._cv:
            if block_id in self._inflight or self._known(block_id):
                return 0
            self._inflight.add(block_id)
        try:
            codec, comp = compress(data, self._codec)
            payload = self.sealer.seal_parts(comp, block_id)
            flags = FLAG_ENCRYPTED if self.sealer.encrypted else 0
            frame = frame_parts(block_id, flags, codec, len(data), payload)
            full = self._append(block_id, frame, len(data))
        except BaseException:
            # Other threads saw this id in flight and may reference it in their maps.
            with self._cv:
                self._lost.add(block_id)
            raise
        else:
            if full is not None:
                self._seal(full)
            return sum(len(part) for part in frame)
        finally:
            with self._cv:
                self._inflight.discard(block_id)
                self._cv.notify_all()

    def _append(self, block_id: bytes, frame: list[bytes], plain_len: int) -> PackWriter | None:
        """Append to a pack no other thread is writing (the copy runs outside the lock);
        returns the writer to seal when it reached its target or a flush asked for it."""
        writer = self._take_writer()
        try:
            offset, length = writer.append(block_id, frame, plain_len)
        except OSError as exc:
            with self._cv:
                self._fail_writer(writer)
                self._after_write_error(exc)
                self._cv.notify_all()
            fsio.raise_os_error(exc, "a pack file")
            raise  # unreachable; raise_os_error always raises
        with self._cv:
            self._busy.discard(writer)
            self._cv.notify_all()
            if writer in self._drop_when_done:  # another append found the disk full
                self._fail_writer(writer)
                fsio.raise_os_error(OSError(errno.ENOSPC, "disk full"), "a pack file")
            self._open[block_id] = (writer, offset, length)
            if writer.size < self.pack_target and writer not in self._seal_when_done:
                self._idle.append(writer)
                return None
            self._seal_when_done.discard(writer)
            self._finishing.add(writer)
            return writer

    def _take_writer(self) -> PackWriter:
        with self._cv:
            self._cv.wait_for(lambda: self._idle or len(self._busy) < WRITERS)
            writer = self._idle.pop() if self._idle else None
            if writer is None:
                try:
                    writer = PackWriter(self.store)
                except OSError as exc:
                    self._after_write_error(exc)
                    fsio.raise_os_error(exc, "a pack file")
                    raise  # unreachable; raise_os_error always raises
                except RepoError as exc:  # the store refused a new spool
                    self._after_write_error(exc)
                    raise
            self._busy.add(writer)
            return writer

    def _fail_writer(self, writer: PackWriter) -> None:
        """A pack could not be written: drop it; its blocks are lost (see _lost)."""
        writer.abort()
        for entry in writer.entries:
            self._open.pop(entry[0], None)
            self._lost.add(entry[0])
        if writer in self._idle:
            self._idle.remove(writer)
        self._busy.discard(writer)
        self._seal_when_done.discard(writer)
        self._drop_when_done.discard(writer)

    def _after_write_error(self, exc: BaseException) -> None:
        """A full disk drops every open pack, not only the one that hit it.

        The other open pack holds blocks of the same VMs, which fail with this error or
        at their commit (see _lost); kept, its space would make the VMs that run after
        them fail too, while dropped, it lets them fit. A pack being appended to is
        dropped when its append ends. Packs already being sealed keep their space."""
        if isinstance(exc, NoSpaceError):
            typed: RepoError = exc
        elif isinstance(exc, OSError) and exc.errno in fsio.NO_SPACE_ERRNOS:
            typed = fsio.typed_os_error(exc, "a pack file")
        else:
            return
        for writer in list(self._idle):
            self._fail_writer(writer)
        self._drop_when_done |= self._busy
        if self._lost_error is None:
            self._lost_error = typed

    def _seal(self, writer: PackWriter) -> None:
        """Seal a full pack, in the background while fewer than SEAL_BEHIND are."""
        with self._cv:
            behind = self._sealing_behind < SEAL_BEHIND
            if behind:
                self._sealing_behind += 1
                if self._sealer is None:
                    self._sealer = ThreadPoolExecutor(1, thread_name_prefix="hcbak-seal")
                sealer = self._sealer
        if not behind:
            self._finish(writer)
            return
        sealer.submit(self._finish_behind, writer)

    def _finish_behind(self, writer: PackWriter) -> None:
        """A background seal: a failure loses the pack's blocks (_lost) and is kept so
        the commit of a point that needs them reports it (see _check_point_blocks)."""
        try:
            self._finish(writer)
        except RepoError as exc:
            with self._cv:
                self._lost_error = exc
        except BaseException as exc:  # kept and reported at commit time
            with self._cv:
                self._lost_error = RepoError(f"could not seal a pack file: {exc}")
        finally:
            with self._cv:
                self._sealing_behind -= 1

    def _finish(self, writer: PackWriter) -> None:
        with self._cv:  # a healing pack must not rebuild a damaged one (its name)
            writer.avoid = self.damaged.packs()
        try:
            pack_id = writer.finish()
        except BaseException as exc:
            with self._cv:
                self._fail_writer(writer)
                self._after_write_error(exc)
                self._finishing.discard(writer)
                self._cv.notify_all()
            if isinstance(exc, OSError):
                fsio.raise_os_error(exc, "a pack file")
            raise
        with self._cv:
            for block_id, offset, length, plain in writer.entries:
                self._open.pop(block_id, None)
                self._new[block_id] = Location(pack_id, offset, length)
                self._unindexed.append(SegmentEntry(block_id, pack_id, offset, length, plain))
            self._unindexed_packs += 1
            self._finishing.discard(writer)
            self._cv.notify_all()
            due = self._unindexed_packs >= INDEX_EVERY_PACKS
        if due:
            self._write_index()

    def _write_index(self) -> None:
        with self._cv:
            if not self._unindexed:
                return
            entries, self._unindexed = self._unindexed, []
            self._unindexed_packs = 0
            try:
                self.segments.append(write_segment(self.store, entries, self.envelope))
            except BaseException:
                self._unindexed = entries + self._unindexed  # the next flush retries them
                self._unindexed_packs += 1
                raise
            # A block stored again after its indexed copy was found damaged: the new,
            # healthy copy replaces the damaged one in the in-memory index.
            self.index.add(entries, replace=bool(self._damaged_here))
            for entry in entries:
                self._damaged_here.discard(entry.id)
                self._new.pop(entry.id, None)

    def flush(self) -> None:
        """Make every block put before this call durable: seal packs, write the index.

        Waits only for the puts and pack seals already under way, not for puts that
        other threads (other VMs) start meanwhile, so a busy repository never starves
        a point's commit.
        """
        with self._cv:
            pending = set(self._inflight)
            self._cv.wait_for(lambda: pending.isdisjoint(self._inflight))
            # Every pending block is now in an open pack, in a pack being sealed, or
            # already durable: seal the idle open packs here, have the threads appending
            # to the others seal them when their append is done, and wait for them all.
            idle, self._idle = self._idle, []
            self._finishing.update(idle)
            self._seal_when_done |= self._busy
            sealing = self._finishing | self._busy
        self._finish_all(idle)
        with self._cv:
            self._cv.wait_for(lambda: sealing.isdisjoint(self._finishing | self._busy))
        self._write_index()

    def _finish_all(self, writers: list[PackWriter]) -> None:
        """Seal the packs at the same time: their fsyncs overlap (a commit waits for them)."""
        if len(writers) < 2:
            for writer in writers:
                self._finish(writer)
            return
        with ThreadPoolExecutor(len(writers) - 1, thread_name_prefix="hcbak-seal") as pool:
            others = [pool.submit(self._finish, writer) for writer in writers[1:]]
            self._finish(writers[0])
            for sealed in others:
                sealed.result()

    def locate(self, block_id: bytes) -> Location | None:
        with self._cv:
            loc = self._new.get(block_id)
            if loc is not None:
                return loc
            return None if block_id in self._damaged_here else self.index.lookup(block_id)

    def get_block(self, block_id: bytes) -> bytes:
        """Read, authenticate, decompress and re-hash one block."""
        if block_id == ZERO_BLOCK:
            return bytes(self.config.block_size)
        frame: bytes | memoryview | None = None
        with self._cv:
            pending = self._open.get(block_id)
            if pending is not None:
                try:
                    frame = pending[0].read_frame(pending[1], pending[2])
                except FileNotFoundError:
                    # Its pack was just sealed (renamed) or dropped: wait until the seal
                    # has published where the block is now, or that it was lost.
                    self._cv.wait_for(lambda: block_id not in self._open)
        if frame is None:
            loc = self.locate(block_id)
            if loc is None:
                if block_id in self.damaged.ids():
                    raise IntegrityError(
                        f"block {block_id.hex()} is damaged (set aside)",
                        hint="the next backup of its VM stores it again",
                    )
                raise IntegrityError(f"block {block_id.hex()} is not in the repository index")
            try:
                frame = self._frames.read(loc)
                return self.decode_frame(block_id, frame)
            except IntegrityError as exc:
                if not isinstance(exc, MissingPackError):
                    self.record_damage([DamagedCopy(block_id, loc.pack, loc.offset, loc.length)])
                raise
        return self.decode_frame(block_id, frame)

    def set_aside_ids(self) -> set[bytes]:
        """Ids whose only stored copies are known damaged: a backup must read these
        blocks again even where they did not change, or its point cannot restore."""
        with self._cv:
            suspects = self.damaged.ids() | self._damaged_here
            if not suspects:  # the usual case: no wait for the index load in the background
                return set()
            return {block_id for block_id in suspects if not self._known(block_id)}

    def record_damage(self, copies: list[DamagedCopy]) -> None:
        """Set damaged copies aside: write a damaged-copy record (docs/format.md) and
        stop using them in this process, so a backup stores those blocks again.

        Best effort: a repository that cannot be written (read-only mount) still
        reports the damage through the error that found it."""
        copies = [c for c in copies if c not in self.damaged.copies]
        if not copies:
            return
        try:
            write_record(self.store, copies, self.envelope)
        except (OSError, RepoError):
            pass
        with self._cv:
            self.damaged.copies.update(copies)
            for copy in copies:
                loc = self.index.lookup(copy.id)
                if loc is not None and loc.pack == copy.pack:
                    self._damaged_here.add(copy.id)

    def decode_frame(self, block_id: bytes, frame: bytes | memoryview) -> bytes:
        what = f"block {block_id.hex()}"
        blob = parse_blob(frame, what)
        check_blob_sealing(blob, self.sealer.encrypted, what)
        if blob.id != block_id:
            raise IntegrityError(f"{what}: the index points at another blob")
        comp = self.sealer.open(blob.payload, block_id, what)
        data = decompress(comp, blob.codec, blob.plain_len, what)
        if self.block_id(data) != block_id:
            raise IntegrityError(f"{what} content does not match its id")
        return data

    def check_not_lost(self, block_ids: set[bytes], what: str) -> None:
        """Refuse to commit `what` when it references a block whose write failed here.

        After flush() every block put before it is indexed unless its pack was aborted
        or its put failed; those ids are in _lost. A lost id that a later put stored
        again counts once it is in the index (flush once more to get it there)."""
        with self._cv:
            lost = set(self._lost)
        if not lost:
            return
        suspects = {bid for bid in block_ids if bid in lost}
        with self._cv:
            unindexed = any(not self.index.contains(b) for b in suspects)
        if unindexed:
            self.flush()
        with self._cv:
            missing = [b for b in suspects if not self.index.contains(b)]
            cause = self._lost_error
        if missing and cause is not None:
            raise type(cause)(f"{what} is not committed: {cause.message}", hint=cause.hint)
        if missing:
            raise RepoError(
                f"{what} is not committed: {len(missing)} of its blocks were lost "
                "when an earlier write to the repository failed",
                hint="run the backup again",
            )

    def close(self) -> None:
        with self._cv:
            idle, self._idle = self._idle, []
            sealer, self._sealer = self._sealer, None
        if sealer is not None:
            sealer.shutdown(wait=True)
        for writer in idle:  # left open by an error: never commit half a pack
            writer.abort()
        self._frames.close()

    def pack_ids(self) -> list[str]:
        keys = self.store.list("packs/")
        return [key.rpartition("/")[2] for key in keys if key.count("/") == 2]

    def pack_sizes(self) -> dict[str, int]:
        """Every pack's size, from one listing (no request per pack on S3)."""
        sizes = self.store.list_sizes("packs/")
        return {key.rpartition("/")[2]: n for key, n in sizes if key.count("/") == 2}

    def pack_size(self, pack_id: str) -> int | None:
        return self.store.size(pack_key(pack_id))

    def remove_temp_files(self) -> int:
        """Delete leftovers of crashed writers (only under an exclusive lock)."""
        return self.store.remove_temp()
