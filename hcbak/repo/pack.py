"""Pack files: write-once containers of framed blobs with a truncation-proof trailer.

A pack is spooled to a temp file (the folder backend: under a temp name in packs/), then
committed as object packs/<2 hex>/<sha256 of its bytes> (fsync and link into place).
Its name is its checksum, so `verify --read-data` detects any flipped bit, and the
trailer (blob table + fixed footer with the pack length and a magic) makes a truncated
pack obvious without reading it (restic #1727).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Collection, Iterator
from dataclasses import dataclass

from isal.isal_zlib import crc32

from hcbak.errors import IntegrityError
from hcbak.repo.storage.base import ObjectMissingError, ObjectStore

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
# Sequential reads of a pack (verify --read-data, repack, repair) fetch this much at once.
READ_CHUNK = 8 * 1024 * 1024


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


def pack_key(pack_id: str) -> str:
    """The object key of a pack: `packs/<first 2 hex>/<id>`."""
    return f"packs/{pack_id[:2]}/{pack_id}"


class PackWriter:
    """Appends blob frames to a spool (a local temp file); `finish` seals it and commits
    it under its content-addressed key (not thread safe: the repository serialises
    appends under its lock). OSError from the spool's file as raised."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.spool = store.spool("packs/")
        self.entries: list[tuple[bytes, int, int, int]] = []  # id, offset, length, plain
        self.size = 0
        # The pack id (sha256 of the file) grows with the file, in the appending thread
        # and outside the repository lock: reading the pack back at the seal cost a
        # second copy of every byte, and its hash sat on the last pack's seal.
        self._digest = hashlib.sha256()
        # Pack names this one must not take (see finish); set by its owner before.
        self.avoid: Collection[str] = ()
        try:
            self._write([PACK_HEADER.pack(PACK_MAGIC, PACK_VERSION, 0)])
        except BaseException:  # a full disk can refuse even the header
            self.abort()
            raise

    def _write(self, parts: list[bytes]) -> None:
        self.size += self.spool.write(parts)
        for part in parts:  # only what is now in the file (write raises otherwise)
            self._digest.update(part)

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
        """Read back a blob of this still-open pack (a get_block before flush);
        FileNotFoundError once the pack was committed or dropped."""
        return self.spool.read(offset, length)

    def finish(self) -> str:
        """Write the trailer and commit the pack under its content address (durable
        when this returns); returns the id.

        A pack whose bytes would name one in `self.avoid` (packs with copies recorded as
        damaged) gets a salt in its first table entry's reserved field instead: a block
        stored again to heal a damaged copy can otherwise rebuild that very pack, whose
        name the store keeps (the damaged file) and whose (id, pack) copies the index
        skips, so the healed block would still count as damaged (docs/format.md)."""
        salt = 0
        while True:
            trailer = self._trailer(salt)
            digest = self._digest.copy()
            for part in trailer:
                digest.update(part)
            if digest.hexdigest() not in self.avoid:
                break
            salt += 1
        self._write(trailer)
        pack_id = self._digest.hexdigest()
        self.store.commit_spool(self.spool, pack_key(pack_id))
        return pack_id

    def _trailer(self, salt: int) -> list[bytes]:
        """The blob table (the first entry's reserved field holds `salt`) and footer."""
        table = b"".join(
            TABLE_ENTRY.pack(i, o, n, p, salt if k == 0 else 0)
            for k, (i, o, n, p) in enumerate(self.entries)
        )
        total = self.size + len(table) + FOOTER.size
        footer = FOOTER.pack(self.size, len(self.entries), crc32(table), total, PACK_END_MAGIC)
        return [table, footer]

    def abort(self) -> None:
        """Drop the pack: never commit half a pack."""
        self.spool.discard()


def read_trailer(store: ObjectStore, pack_id: str) -> list[tuple[bytes, int, int, int]]:
    """Check a pack's footer and blob table; returns (id, offset, length, plain_len).
    ObjectMissingError when the pack is missing."""
    what = f"pack {pack_id}"
    key = pack_key(pack_id)
    size = store.size(key)
    if size is None:
        raise ObjectMissingError(f"{what} is missing")
    if size < PACK_HEADER.size + FOOTER.size:
        raise IntegrityError(f"{what} is truncated ({size} bytes)")
    footer = store.get_range(key, size - FOOTER.size, FOOTER.size)
    if len(footer) != FOOTER.size:
        raise IntegrityError(f"{what} is truncated or damaged (no valid trailer)")
    table_offset, count, crc, total, magic = FOOTER.unpack(footer)
    if magic != PACK_END_MAGIC or total != size:
        raise IntegrityError(f"{what} is truncated or damaged (no valid trailer)")
    want = count * TABLE_ENTRY.size
    table = store.get_range(key, table_offset, want) if want and table_offset < size else b""
    if len(table) != want or crc32(table) != crc:
        raise IntegrityError(f"{what} has a damaged blob table")
    return [(i, o, n, p) for i, o, n, p, _ in TABLE_ENTRY.iter_unpack(table)]


class PackReader:
    """Reads of one pack in ascending order through a window of `chunk` bytes: one
    ranged read per window, not per blob (an object store charges a request each).
    ObjectMissingError when the pack is missing."""

    def __init__(self, store: ObjectStore, pack_id: str, chunk: int = READ_CHUNK) -> None:
        self.store, self.key, self.chunk = store, pack_key(pack_id), chunk
        size = store.size(self.key)
        if size is None:
            raise ObjectMissingError(f"pack {pack_id} is missing")
        self.size = size
        self._start = 0
        self._window = b""

    def read(self, offset: int, length: int) -> bytes:
        """Up to `length` bytes at `offset` (fewer only at the end of the pack)."""
        end = offset + length
        if not (self._start <= offset and end <= self._start + len(self._window)):
            want = min(max(length, self.chunk), max(0, self.size - offset))
            self._start, self._window = offset, self.store.get_range(self.key, offset, want)
        return self._window[offset - self._start : end - self._start]


def iter_pack_frames(store: ObjectStore, pack_id: str) -> Iterator[tuple[int, bytes]]:
    """Stream (offset, frame bytes) of every blob in file order, in bounded memory.

    Also checks that the pack's sha256 equals its name (any flipped bit is caught).
    """
    entries = sorted(read_trailer(store, pack_id), key=lambda e: e[1])
    reader = PackReader(store, pack_id)
    digest = hashlib.sha256()
    pos = 0
    for _, offset, length, _ in entries:
        if offset > pos:
            digest.update(reader.read(pos, offset - pos))
        frame = reader.read(offset, length)
        digest.update(frame)
        pos = offset + len(frame)
        yield offset, frame
    while pos < reader.size:
        rest = reader.read(pos, min(reader.chunk, reader.size - pos))
        if not rest:
            break
        digest.update(rest)
        pos += len(rest)
    if digest.hexdigest() != pack_id:
        raise IntegrityError(f"pack {pack_id} content does not match its name (corrupt)")
