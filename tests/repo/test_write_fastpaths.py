"""The write path's shortcuts keep the format: lz4 sampling, ISA-L crc32, background seals."""

from __future__ import annotations

import errno
import os
import platform
import threading
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from isal.isal_zlib import crc32 as isal_crc32
from repo_helpers import PASS, disk_bytes, make_repo, read_disk, write_point

from hcbak.errors import NoSpaceError, RepoError
from hcbak.repo import open_repo
from hcbak.repo.codec import (
    CODEC_LZ4,
    CODEC_NONE,
    LZ4_SAMPLE,
    compress,
    decompress,
    looks_incompressible,
)
from hcbak.repo.storage import LocalStore

MiB = 1 << 20
TEXT = (b"INFO kernel: backup of node 3 finished in 12 s\n" * (MiB // 40))[:MiB]


@given(st.binary(max_size=4096), st.binary(max_size=4096), st.integers(0, 2**32 - 1))
def test_isal_crc32_gives_zlibs_values(a: bytes, b: bytes, start: int) -> None:
    """Blob and table checksums are zlib's crc32 on disk: the faster routine must agree,
    chained too (frames are checksummed piece by piece)."""
    assert isal_crc32(a + b) == zlib.crc32(a + b)
    assert isal_crc32(b, isal_crc32(a, start)) == zlib.crc32(b, zlib.crc32(a, start))


def test_random_block_is_stored_raw_and_text_compressed() -> None:
    random_block = os.urandom(MiB)
    assert looks_incompressible(random_block)
    assert compress(random_block, CODEC_LZ4) == (CODEC_NONE, random_block)
    assert not looks_incompressible(TEXT)
    codec, out = compress(TEXT, CODEC_LZ4)
    assert codec == CODEC_LZ4 and len(out) < len(TEXT) // 4


def test_a_compressible_end_is_enough_to_compress_the_block() -> None:
    """Random head, text tail (a file boundary inside the block): still compressed."""
    block = os.urandom(MiB // 2) + TEXT[: MiB // 2]
    assert not looks_incompressible(block)
    codec, out = compress(block, CODEC_LZ4)
    assert codec == CODEC_LZ4 and len(out) < len(block)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["random", "text", "zero"]), st.integers(1, 5 * LZ4_SAMPLE)),
        max_size=6,
    )
)
def test_compress_round_trips_any_mix(parts: list[tuple[str, int]]) -> None:
    data = b"".join(
        os.urandom(n) if kind == "random" else TEXT[:n] if kind == "text" else bytes(n)
        for kind, n in parts
    )
    codec, out = compress(data, CODEC_LZ4)
    assert decompress(out, codec, len(data), "test") == data
    assert len(out) <= len(data)


def test_background_seal_failure_refuses_the_point_with_its_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full pack is sealed by the background thread; its ENOSPC (injected: a disk full at
    exactly that moment cannot be arranged otherwise) must still reach the commit of the
    point whose blocks it held, as the typed no-space error, and a retry must commit."""
    from hcbak.repo import pack as pack_mod

    root = make_repo(tmp_path / "r")
    real_finish = pack_mod.PackWriter.finish
    sealers: list[str] = []

    def finish_fails_once(self: pack_mod.PackWriter) -> str:
        sealers.append(threading.current_thread().name)
        if len(sealers) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_finish(self)

    monkeypatch.setattr(pack_mod.PackWriter, "finish", finish_fails_once)
    data = disk_bytes(11, 24)
    with open_repo(root, passphrase=PASS, pack_target=512 * 1024) as repo:
        with pytest.raises(NoSpaceError, match="is not committed: no space left"):
            write_point(repo, data, vm="vm1")
        retried = write_point(repo, data, vm="vm1")
        assert read_disk(repo, retried.id) == data
    assert sealers[0].startswith("hcbak-seal")  # the failure happened behind the writer
    with open_repo(root, passphrase=PASS) as repo:
        assert [p.id for p in repo.list_points()] == [retried.id]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_malloc_tuning_applies_on_glibc() -> None:
    from hcbak.malloc_tuning import tune_for_blocks

    assert tune_for_blocks() is True
    assert tune_for_blocks() is True  # idempotent


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_the_hcbak_process_tunes_malloc_once_at_its_entry_point() -> None:
    """A process setting, made by the console script (not by opening a repository)."""
    import subprocess
    import sys

    probe = (
        "import atexit, sys; import hcbak.malloc_tuning as m; "
        "atexit.register(lambda: print('tuned', m._done, flush=True)); "
        "sys.argv = ['hcbak', '--version']; from hcbak.cli.entry import main; main()"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.stdout.splitlines()[-1] == "tuned True", (out.stdout, out.stderr)


def test_write_all_finishes_a_short_writev(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """writev may write less than asked (a signal, a nearly full disk); such a short write
    cannot be arranged on demand, so os.writev is made to stop after 5 bytes once."""
    from hcbak.repo import fsio

    real_writev = os.writev
    calls = {"n": 0}

    def short_once(fd: int, parts: list[bytes]) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return os.write(fd, b"".join(parts)[:5])
        return real_writev(fd, parts)

    monkeypatch.setattr(os, "writev", short_once)
    parts = [b"header", os.urandom(1000), b"tail"]
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        assert fsio.write_all(fd, parts) == 1010
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"".join(parts)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5 * MiB), st.booleans())
def test_lz4_frames_decode_by_the_sized_path_and_the_general_one(
    size: int, compressible: bool
) -> None:
    """Our frames (any block size lz4 picks, several lz4 blocks past 4 MiB) and frames of
    other writers (content size, checksums, linked blocks) decode to the same bytes."""
    import lz4.frame

    from hcbak.repo.codec import _lz4, _lz4_decompress

    data = (TEXT * 6)[:size] if compressible else os.urandom(size)
    assert _lz4_decompress(_lz4(data), size) == data
    other = lz4.frame.compress(data, content_checksum=True, block_checksum=True)
    assert decompress(other, CODEC_LZ4, size, "test") == data


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 255))
def test_a_damaged_lz4_frame_is_an_integrity_error_never_a_crash(where: int, xor: int) -> None:
    from hcbak.errors import IntegrityError

    frame = bytearray(compress(TEXT[: 64 * 1024], CODEC_LZ4)[1])
    frame[where % len(frame)] ^= xor
    try:
        out = decompress(bytes(frame), CODEC_LZ4, 64 * 1024, "test")
    except IntegrityError:
        return
    # lz4 has no checksum of its own here: a flip may decode to other bytes of the
    # right length, which the block id check after decompress refuses.
    assert len(out) == 64 * 1024


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 255))
def test_a_damaged_zstd_frame_is_an_integrity_error_never_a_crash(where: int, xor: int) -> None:
    """zstandard is imported on first use, and its own error must still be translated."""
    from hcbak.errors import IntegrityError
    from hcbak.repo.codec import CODEC_ZSTD

    codec, out = compress(TEXT[: 64 * 1024], CODEC_ZSTD)
    assert codec == CODEC_ZSTD
    frame = bytearray(out)
    frame[where % len(frame)] ^= xor
    try:
        plain = decompress(bytes(frame), CODEC_ZSTD, 64 * 1024, "test")
    except IntegrityError:
        return
    assert len(plain) == 64 * 1024  # the block id check after decompress refuses it


def _filesystem(path: Path) -> str:
    import subprocess

    return subprocess.run(
        ["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True
    ).stdout.strip()


def test_blocks_read_back_with_o_direct_where_the_filesystem_has_it(tmp_path: Path) -> None:
    if not hasattr(os, "O_DIRECT") or _filesystem(tmp_path) == "tmpfs":
        pytest.skip("needs a filesystem with O_DIRECT (tmp_path is tmpfs here)")
    root = make_repo(tmp_path / "r")
    data = disk_bytes(21, 12)
    with open_repo(root, passphrase=PASS) as repo:
        point = write_point(repo, data)
    with open_repo(root, passphrase=PASS) as repo:
        assert read_disk(repo, point.id) == data
        assert repo._frames._direct_reads  # still on: the reads above went around the cache


def test_reads_fall_back_to_the_page_cache_without_o_direct(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filesystem without O_DIRECT answers EINVAL at open. None can be had here (tmpfs
    has O_DIRECT since Linux 6.6), so the open is made to fail as such a one does."""
    from hcbak.repo import packread

    def no_direct(path: str, flags: int) -> int:
        raise OSError(errno.EINVAL, "Invalid argument")

    root = make_repo(tmp_path / "r")
    data = disk_bytes(22, 6)
    with open_repo(root, passphrase=PASS) as repo:
        point = write_point(repo, data)
    monkeypatch.setattr(packread, "_open_direct", no_direct)
    with open_repo(root, passphrase=PASS) as repo:
        assert read_disk(repo, point.id) == data
        assert not repo._frames._direct_reads


def _slow_appends(monkeypatch: pytest.MonkeyPatch, delay: float) -> list[int]:
    """Appends that take `delay` s (a page-cache copy on a slow VM); returns a log of
    how many packs were being appended to at once."""
    import time

    from hcbak.repo import pack as pack_mod

    real_append = pack_mod.PackWriter.append
    active: set[int] = set()
    seen: list[int] = []
    lock = threading.Lock()

    def slow(self: pack_mod.PackWriter, *args: object, **kwargs: object) -> tuple[int, int]:
        with lock:
            active.add(id(self))
            seen.append(len(active))
        time.sleep(delay)
        try:
            return real_append(self, *args, **kwargs)  # type: ignore[arg-type]
        finally:
            with lock:
                active.discard(id(self))

    monkeypatch.setattr(pack_mod.PackWriter, "append", slow)
    return seen


def test_two_threads_append_to_two_packs_at_once_and_every_block_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy into a pack runs outside the repository lock, one pack per thread, so
    a slow copy does not hold up the other thread's hashing, sealing and appending."""
    root = make_repo(tmp_path / "r")
    seen = _slow_appends(monkeypatch, 0.02)
    data = [disk_bytes(seed, 12) for seed in (21, 22)]
    points = []
    with open_repo(root, passphrase=PASS) as repo:

        def back_up(i: int) -> None:
            points.append((i, write_point(repo, data[i], vm=f"vm{i}")))

        threads = [threading.Thread(target=back_up, args=(i,)) for i in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert max(seen) == 2  # two packs were being filled at the same moment
    with open_repo(root, passphrase=PASS) as repo:
        assert len(repo.pack_ids()) >= 2
        for i, point in points:
            assert read_disk(repo, point.id) == data[i]


def _gate_appends(
    monkeypatch: pytest.MonkeyPatch, full: set[bytes]
) -> dict[bytes, tuple[threading.Event, threading.Event]]:
    """PackWriter.append pauses for the ids given gates and raises ENOSPC for `full`
    (injected: a disk that fills at exactly one append cannot be arranged otherwise)."""
    from hcbak.repo import pack as pack_mod

    real_append = pack_mod.PackWriter.append
    gates: dict[bytes, tuple[threading.Event, threading.Event]] = {}

    def gated(self: pack_mod.PackWriter, block_id: bytes, *args: object) -> tuple[int, int]:
        if block_id in gates:
            entered, release = gates[block_id]
            entered.set()
            release.wait(5)
        if block_id in full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_append(self, block_id, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(pack_mod.PackWriter, "append", gated)
    return gates


def test_a_flush_seals_the_pack_another_thread_is_appending_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flush waits for the puts already under way; meanwhile another VM's thread may
    start appending to the pack that holds this point's block. The flush must have that
    thread seal the pack when its append ends, and wait for it: not skip it."""
    root = make_repo(tmp_path / "r")
    gates = _gate_appends(monkeypatch, full=set())
    mine, pending, later = (os.urandom(256 * 1024) for _ in range(3))
    with open_repo(root, passphrase=PASS) as repo:
        ids = {name: repo.block_id(b) for name, b in (("p", pending), ("q", later))}
        for name in ids:
            gates[ids[name]] = (threading.Event(), threading.Event())

        def put(block: bytes) -> threading.Thread:
            thread = threading.Thread(target=repo.put_block, args=(repo.block_id(block), block))
            thread.start()
            return thread

        p = put(pending)  # pack 1, held mid-append
        assert gates[ids["p"]][0].wait(5)
        repo.put_block(repo.block_id(mine), mine)  # pack 2, idle afterwards
        flushed = threading.Thread(target=repo.flush)
        flushed.start()  # waits for the pending put
        q = put(later)  # takes pack 2 (holding mine) while the flush waits
        assert gates[ids["q"]][0].wait(5)
        gates[ids["p"]][1].set()
        p.join(5)
        flushed.join(0.3)
        assert flushed.is_alive()  # pack 2 is still being appended to: wait for it
        gates[ids["q"]][1].set()
        q.join(5)
        flushed.join(5)
        assert not flushed.is_alive()
        for block in (mine, pending, later):
            assert repo.locate(repo.block_id(block)) is not None  # sealed and indexed
            assert repo.get_block(repo.block_id(block)) == block


def test_a_full_disk_at_the_pack_header_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the full-disk crash test: a new pack whose 16-byte header could not be
    written was left behind as a temp file (injected: the header write fails)."""
    from hcbak.repo import fsio
    from hcbak.repo import pack as pack_mod

    (tmp_path / "packs").mkdir()

    def no_space(fd: int, parts: list[bytes]) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fsio, "write_all", no_space)
    with pytest.raises(OSError):
        pack_mod.PackWriter(LocalStore(tmp_path))
    assert list((tmp_path / "packs").iterdir()) == []


def test_a_flush_seals_its_open_packs_at_the_same_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit waits for the fsync of every open pack; two packs must not queue."""
    import time

    from hcbak.repo import pack as pack_mod

    root = make_repo(tmp_path / "r")
    real_finish = pack_mod.PackWriter.finish
    sealing: list[int] = []
    most = [0]
    lock = threading.Lock()

    def slow_finish(self: pack_mod.PackWriter) -> str:
        with lock:
            sealing.append(1)
            most[0] = max(most[0], len(sealing))
        time.sleep(0.1)
        with lock:
            sealing.pop()
        return real_finish(self)

    _slow_appends(monkeypatch, 0.02)  # two threads: two open packs
    monkeypatch.setattr(pack_mod.PackWriter, "finish", slow_finish)
    blocks = [os.urandom(256 * 1024) for _ in range(8)]
    with open_repo(root, passphrase=PASS) as repo:
        threads = [
            threading.Thread(
                target=lambda part=part: [repo.put_block(repo.block_id(b), b) for b in part]
            )
            for part in (blocks[:4], blocks[4:])
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        repo.flush()
        assert all(repo.get_block(repo.block_id(b)) == b for b in blocks)
    assert most[0] == 2


def test_a_block_read_while_its_pack_is_being_sealed_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The seal renames the temp pack before it publishes the block's new place; a read
    in between found the temp file gone (FileNotFoundError) instead of waiting."""
    from hcbak.repo import pack as pack_mod

    root = make_repo(tmp_path / "r")
    real_finish = pack_mod.PackWriter.finish
    renamed, release = threading.Event(), threading.Event()

    def finish_then_pause(self: pack_mod.PackWriter) -> str:
        pack_id = real_finish(self)  # the temp file is renamed now
        renamed.set()
        release.wait(5)
        return pack_id

    monkeypatch.setattr(pack_mod.PackWriter, "finish", finish_then_pause)
    block = os.urandom(256 * 1024)
    got: list[bytes | BaseException] = []
    with open_repo(root, passphrase=PASS) as repo:
        block_id = repo.block_id(block)
        repo.put_block(block_id, block)
        flusher = threading.Thread(target=repo.flush)
        flusher.start()
        assert renamed.wait(5)

        def read() -> None:
            try:
                got.append(repo.get_block(block_id))
            except BaseException as exc:  # reported by the assertion below
                got.append(exc)

        reader = threading.Thread(target=read)
        reader.start()
        reader.join(0.2)
        release.set()
        reader.join(5)
        flusher.join(5)
    assert got == [block]


def _temp_packs(root: Path) -> list[str]:
    return [p.name for p in (root / "packs").rglob("*") if p.is_file() and p.name.startswith(".")]


def test_a_full_disk_drops_the_other_open_pack_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by CI: after a VM failed on a full disk, the second open pack still held
    part of its blocks, so the VM after it found the disk full as well. Dropping every
    open pack frees that space at once (the single pack of before did the same)."""
    root = make_repo(tmp_path / "r")
    early, kept, fails = (os.urandom(256 * 1024) for _ in range(3))
    with open_repo(root, passphrase=PASS) as repo:
        ids = [repo.block_id(b) for b in (early, kept, fails)]
        gates = _gate_appends(monkeypatch, full={ids[2]})
        gates[ids[0]] = (threading.Event(), threading.Event())
        first = threading.Thread(target=repo.put_block, args=(ids[0], early))
        first.start()  # pack 1, held mid-append
        assert gates[ids[0]][0].wait(5)
        repo.put_block(ids[1], kept)  # pack 2
        gates[ids[0]][1].set()
        first.join(5)  # both packs are open and idle now
        assert len(_temp_packs(root)) == 2
        with pytest.raises(NoSpaceError):
            repo.put_block(ids[2], fails)
        assert _temp_packs(root) == []  # both packs dropped, their space free
        assert not any(repo.has_block(i) for i in ids)
        monkeypatch.undo()  # the disk has room again: the blocks are stored anew
        for block_id, block in zip(ids, (early, kept, fails), strict=True):
            assert repo.put_block(block_id, block) > 0
        repo.flush()
        assert [repo.get_block(i) for i in ids] == [early, kept, fails]


def test_a_full_disk_drops_the_pack_another_thread_is_appending_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other open pack may be mid-append when the disk fills: that append ends with
    the same error and its pack is dropped; a retry stores the block again."""
    root = make_repo(tmp_path / "r")
    busy, fails = os.urandom(256 * 1024), os.urandom(256 * 1024)
    errors: list[BaseException] = []
    with open_repo(root, passphrase=PASS) as repo:
        ids = [repo.block_id(b) for b in (busy, fails)]
        gates = _gate_appends(monkeypatch, full={ids[1]})
        gates[ids[0]] = (threading.Event(), threading.Event())

        def put_busy() -> None:
            try:
                repo.put_block(ids[0], busy)
            except BaseException as exc:  # checked below
                errors.append(exc)

        first = threading.Thread(target=put_busy)
        first.start()
        assert gates[ids[0]][0].wait(5)
        with pytest.raises(NoSpaceError):
            repo.put_block(ids[1], fails)
        gates[ids[0]][1].set()
        first.join(5)
        assert [type(e) for e in errors] == [NoSpaceError]
        assert _temp_packs(root) == []
        assert not repo.has_block(ids[0])
        monkeypatch.undo()
        point = write_point(repo, busy, vm="vm1")
        assert read_disk(repo, point.id) == busy


def _record_early_flushes(
    monkeypatch: pytest.MonkeyPatch, fail: OSError | None = None
) -> list[tuple[str, int]]:
    """Early flushes every 512 KiB, recorded as (thread, file size); `fail` makes the
    first one raise (injected: a writeback error cannot be caused on a healthy disk)."""
    from hcbak.repo import fsio
    from hcbak.repo.storage import base as storage_base

    monkeypatch.setattr(storage_base, "EARLY_FLUSH_EVERY", 512 * 1024)
    seen: list[tuple[str, int]] = []
    real = fsio._fdatasync

    def fdatasync(fd: int) -> None:
        seen.append((threading.current_thread().name, os.fstat(fd).st_size))
        if fail is not None and len(seen) == 1:
            raise fail
        real(fd)

    monkeypatch.setattr(fsio, "_fdatasync", fdatasync)
    return seen


def test_a_growing_pack_is_flushed_in_the_background_before_its_seal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A seal that flushes a whole pack waits ~2 ms per MiB on a disk with a write cache:
    the pack must be flushed behind the appends while it grows, and still read back."""
    seen = _record_early_flushes(monkeypatch)
    root = make_repo(tmp_path / "r")
    data = b"".join(os.urandom(256 * 1024) for _ in range(12))
    with open_repo(root, passphrase=PASS) as repo:
        point = write_point(repo, data)
        assert read_disk(repo, point.id) == data
    # The seal fsyncs with os.fsync: every fdatasync seen was an early flush. (How many
    # there were depends on how fast this disk flushes: one under way is never doubled.)
    assert seen and all(name == "hcbak-flush" for name, _ in seen)


def test_early_flushes_start_every_interval_one_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flush schedule itself, made deterministic: a flush starts once the file grew
    by the interval since the last one started, never while one is under way."""
    from hcbak.repo import fsio
    from hcbak.repo.storage.base import _EarlyFlush

    monkeypatch.setattr("hcbak.repo.storage.base.EARLY_FLUSH_EVERY", 1000)
    started: list[int] = []
    release = threading.Event()

    def fdatasync(fd: int) -> None:
        started.append(fd)
        assert release.wait(5)

    monkeypatch.setattr(fsio, "_fdatasync", fdatasync)
    with open(tmp_path / "f", "wb") as fh:
        flusher = _EarlyFlush(fh.fileno())
        flusher.grew_to(999)
        assert started == []
        flusher.grew_to(1000)  # starts a flush, which now waits for `release`
        flusher.grew_to(2500)  # due, but one is under way: not doubled
        release.set()
        flusher.wait()
        assert started == [fh.fileno()]
        flusher.grew_to(1999)  # measured from where the last one started (1000)
        flusher.wait()
        assert len(started) == 1
        flusher.grew_to(2000)
        flusher.wait()
        assert started == [fh.fileno()] * 2


def test_a_failed_early_flush_refuses_the_point_although_the_seal_fsync_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Linux reports a writeback error to one fsync caller only: after the early flush
    saw it, the seal's own fsync succeeds on data that never reached the disk. The pack
    must be dropped and the point refused, and a retry must store the blocks again."""
    seen = _record_early_flushes(monkeypatch, fail=OSError(errno.EIO, "Input/output error"))
    root = make_repo(tmp_path / "r")
    data = b"".join(os.urandom(256 * 1024) for _ in range(8))
    with open_repo(root, passphrase=PASS) as repo:
        with pytest.raises(RepoError, match="Input/output error"):
            write_point(repo, data)
        assert len(seen) >= 1
        assert _temp_packs(root) == []
        assert repo.list_points() == []
        retried = write_point(repo, data)
        assert read_disk(repo, retried.id) == data
    with open_repo(root, passphrase=PASS) as repo:
        assert [p.id for p in repo.list_points()] == [retried.id]


def test_a_full_disk_seen_by_an_early_flush_is_the_typed_no_space_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NFS reports a full disk or quota at flush time, not at write time."""
    _record_early_flushes(monkeypatch, fail=OSError(errno.EDQUOT, "Disk quota exceeded"))
    root = make_repo(tmp_path / "r")
    with open_repo(root, passphrase=PASS) as repo:
        with pytest.raises(NoSpaceError):
            write_point(repo, b"".join(os.urandom(256 * 1024) for _ in range(8)))
        assert _temp_packs(root) == []
