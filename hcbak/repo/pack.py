"""Pack files: write-once containers of framed blobs with a truncation-proof trailer.

A pack is written under a temp name in packs/, fsynced, then renamed to
packs/<2 hex>/<sha256 of the file>. Its name is its checksum, so `verify --read-data`
detects any flipped bit, and the trailer (blob table + fixed footer with the pack
length and a magic) makes a truncated pack obvious without reading it (restic #1727).
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from isal.isal_zlib import crc32

from hcbak.errors import IntegrityError
from hcbak.repo import fsio

PACK_MAGIC = b"HCBKPACK"
PACK_END_MAGIC = b"HCBKPEND"
PACK_VERSION = 1
PACK_HEADER = struct.Struct("<8sII")  # magic, version, reserved
# Blob frame header: id | flags | codec | reserved | plain_len | stored_len | crc32
BLOB_HEADER = struct.Struct("<16sBBHIII")
# Blob table entry: id | frame offset | frame length | plain length | reserved
TABLE_ENTRY = struct.Struct("<16sQIII")
# Footer: table offset | blob count | table crc32 | pack length | magic
FOOTER = struct.Struct("<QIIQ8s")
# A pack being filled is fdatasynced in the background after every this many bytes.
# Flushing a disk's write cache costs about as long as writing the data did, so a seal
# that flushed a whole 20-64 MiB pack at once waited ~2 ms per MiB (0.08 s of a 0.7 s
# incremental); flushed as it grows, the seal waits only for the last few MiB.
EARLY_FLUSH_EVERY = 8 * 1024 * 1024


@dataclass(frozen=True)
class BlobFrame:
    """A parsed blob frame of a pack; the payload is still sealed and compressed."""

    id: bytes
    flags: int
    codec: int
    plain_len: int
    payload: bytes | memoryview  # a view into the frame: blocks are MiBs, slices would copy


def frame_blob(block_id: bytes, flags: int, codec: int, plain_len: int, payload: bytes) -> bytes:
    """The bytes of one blob: header (with crc32 over header fields + payload) + payload."""
    return b"".join(frame_parts(block_id, flags, codec, plain_len, [payload]))


def frame_parts(
    block_id: bytes, flags: int, codec: int, plain_len: int, payload: list[bytes]
) -> list[bytes]:
    """`frame_blob` as pieces (header, then the payload's pieces), without joining them."""
    stored_len = sum(len(part) for part in payload)
    pre = BLOB_HEADER.pack(block_id, flags, codec, 0, plain_len, stored_len, 0)[:-4]
    crc = crc32(pre)
    for part in payload:
        crc = crc32(part, crc)
    return [pre + struct.pack("<I", crc), *payload]


def parse_blob(frame: bytes | memoryview, what: str) -> BlobFrame:
    if len(frame) < BLOB_HEADER.size:
        raise IntegrityError(f"{what} is truncated")
    block_id, flags, codec, _, plain_len, stored_len, crc = BLOB_HEADER.unpack_from(frame)
    payload = memoryview(frame)[BLOB_HEADER.size : BLOB_HEADER.size + stored_len]
    if len(payload) != stored_len:
        raise IntegrityError(f"{what} is truncated")
    if crc32(payload, crc32(frame[: BLOB_HEADER.size - 4])) != crc:
        raise IntegrityError(f"{what} has a bad checksum")
    return BlobFrame(block_id, flags, codec, plain_len, payload)


FLAG_ENCRYPTED = 0x01


def check_blob_sealing(blob: BlobFrame, encrypted: bool, what: str) -> None:
    """Refuse a blob whose encryption flag disagrees with its repository: a cleartext
    blob in an encrypted repository is never read as data (someone with write access
    could plant it), and an encrypted one in a cleartext repository cannot be read."""
    if encrypted and not blob.flags & FLAG_ENCRYPTED:
        raise IntegrityError(f"{what} is stored in clear in an encrypted repository")
    if not encrypted and blob.flags & FLAG_ENCRYPTED:
        raise IntegrityError(f"{what} is encrypted but the repository is not")


def pack_path(root: Path, pack_id: str) -> Path:
    return root / "packs" / pack_id[:2] / pack_id


class PackWriter:
    """Appends blob frames to a temp file; `finish` seals and renames it (not thread safe:
    the repository serialises appends under its lock)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = fsio.tmp_path_for(root / "packs" / "pack")
        self._fd = fsio.open_private(self.tmp, os.O_WRONLY | os.O_EXCL)
        self.entries: list[tuple[bytes, int, int, int]] = []  # id, offset, length, plain
        self.size = 0
        # The pack id (sha256 of the file) grows with the file, in the appending thread
        # and outside the repository lock: reading the pack back at the seal cost a
        # second copy of every byte, and its hash sat on the last pack's seal.
        self._digest = hashlib.sha256()
        self._flusher = _EarlyFlush(self._fd)
        try:
            self._write([PACK_HEADER.pack(PACK_MAGIC, PACK_VERSION, 0)])
        except BaseException:  # a full disk can refuse even the header
            self.abort()
            raise

    def _write(self, parts: list[bytes]) -> None:
        self.size += fsio.write_all(self._fd, parts)
        for part in parts:  # only what is now in the file (write_all raises otherwise)
            self._digest.update(part)
        self._flusher.grew_to(self.size)

    def append(
        self, block_id: bytes, frame: bytes | list[bytes], plain_len: int
    ) -> tuple[int, int]:
        """Append one blob frame, given whole or as pieces (one writev, not joined)."""
        offset = self.size
        self._write([frame] if isinstance(frame, bytes) else frame)
        length = self.size - offset
        self.entries.append((block_id, offset, length, plain_len))
        return offset, length

    def read_frame(self, offset: int, length: int) -> bytes:
        """Read back a blob of this still-open pack (a get_block before flush)."""
        with open(self.tmp, "rb") as fh:
            fh.seek(offset)
            return fh.read(length)

    def finish(self) -> str:
        """Write the trailer, fsync, rename to the content-addressed name; returns the id."""
        table = b"".join(TABLE_ENTRY.pack(i, o, n, p, 0) for i, o, n, p in self.entries)
        table_offset = self.size
        total = self.size + len(table) + FOOTER.size
        footer = FOOTER.pack(table_offset, len(self.entries), crc32(table), total, PACK_END_MAGIC)
        self._write([table, footer])
        pack_id = self._digest.hexdigest()
        self._flusher.wait()
        fsio._fsync(self._fd)
        fsio.drop_cache(self._fd)
        self._close()
        final = pack_path(self.root, pack_id)
        fsio.make_private_dir(final.parent)
        fsio.commit_tmp(self.tmp, final, write_once=True)
        return pack_id

    def _close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            try:
                self._flusher.wait()  # never close (or reuse) an fd a flush still uses
            except OSError:
                pass  # the pack is being dropped anyway
            finally:
                os.close(fd)

    def abort(self) -> None:
        try:
            self._close()
        except OSError:
            pass
        fsio.remove_quietly(self.tmp)


class _EarlyFlush:
    """fdatasync of a growing pack in a helper thread, one at a time.

    Only ever early: the seal still fsyncs the whole file before the rename. A failed
    early flush is kept and raised by the next append or the seal, because Linux reports
    a writeback error to one fsync caller only, and the seal's fsync could then succeed
    on data that never reached the disk.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._flushed = 0  # file size when the last flush started
        self._thread: threading.Thread | None = None
        self._error: OSError | None = None

    def grew_to(self, size: int) -> None:
        if self._error is not None:
            raise self._error
        if size - self._flushed < EARLY_FLUSH_EVERY:
            return
        if self._thread is not None:
            if self._thread.is_alive():
                return  # the disk is behind: the next append starts the next flush
            self._thread.join()
        self._flushed = size
        self._thread = threading.Thread(target=self._flush, name="hcbak-flush", daemon=True)
        self._thread.start()

    def _flush(self) -> None:
        try:
            fsio._fdatasync(self._fd)
        except OSError as exc:
            self._error = exc

    def wait(self) -> None:
        """Wait for the flush under way; raise the error of any early flush."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            raise self._error


def read_trailer(path: Path) -> list[tuple[bytes, int, int, int]]:
    """Check a pack's footer and blob table; returns (id, offset, length, plain_len)."""
    what = f"pack {path.name}"
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size < PACK_HEADER.size + FOOTER.size:
            raise IntegrityError(f"{what} is truncated ({size} bytes)")
        fh.seek(size - FOOTER.size)
        table_offset, count, crc, total, magic = FOOTER.unpack(fh.read(FOOTER.size))
        if magic != PACK_END_MAGIC or total != size:
            raise IntegrityError(f"{what} is truncated or damaged (no valid trailer)")
        fh.seek(table_offset)
        table = fh.read(count * TABLE_ENTRY.size)
    if len(table) != count * TABLE_ENTRY.size or crc32(table) != crc:
        raise IntegrityError(f"{what} has a damaged blob table")
    return [(i, o, n, p) for i, o, n, p, _ in TABLE_ENTRY.iter_unpack(table)]


def iter_pack_frames(path: Path, chunk: int = 1 << 20) -> Iterator[tuple[int, bytes]]:
    """Stream (offset, frame bytes) of every blob in file order, in bounded memory.

    Also checks that the file's sha256 equals its name (any flipped bit is caught).
    """
    entries = sorted(read_trailer(path), key=lambda e: e[1])
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        pos = 0
        for _, offset, length, _ in entries:
            if offset > pos:
                gap = fh.read(offset - pos)
                digest.update(gap)
                pos += len(gap)
            frame = fh.read(length)
            digest.update(frame)
            pos += len(frame)
            yield offset, frame
        while True:
            rest = fh.read(chunk)
            if not rest:
                break
            digest.update(rest)
    if digest.hexdigest() != path.name:
        raise IntegrityError(f"pack {path.name} content does not match its name (corrupt)")
