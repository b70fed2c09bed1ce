"""The storage interface: a repository's bytes as a flat set of objects named by keys.

Every repository module reaches the repository's bytes through an `ObjectStore`, so a
second backend (S3) stores the same format (docs/format.md) without the repository
knowing where its bytes live. Keys are `/`-separated and are the names of today's
files relative to the repository root: `config`, `keys/...`, `packs/ab/<id>`,
`index/<id>`, `points/<id>`, `locks/<id>`, `damaged/<id>`. No part of a key starts
with "." (temp files do; listings never show them).

A `Spool` is a local temp file for a big object whose key is known only at the end
(a pack: its id is the sha256 of its bytes). The folder backend spools inside the
target folder, so committing is a rename; an object store spools to a local folder
and uploads at the commit, in bounded memory.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

from hcbak.errors import RepoError
from hcbak.repo import fsio

# A spool being filled is fdatasynced in the background after every this many bytes
# (folder backend only: there the spool IS the object-to-be). Flushing a disk's write
# cache costs about as long as writing the data did, so a seal that flushed a whole
# 20-64 MiB pack at once waited ~2 ms per MiB; flushed as it grows, the seal waits only
# for the last few MiB.
EARLY_FLUSH_EVERY = 8 * 1024 * 1024


class ObjectMissingError(RepoError):
    """The object asked for does not exist (a folder: no such file; S3: 404)."""


class ReadOnlyStoreError(RepoError):
    """The store refuses writes: a read-only mount or snapshot, no write permission.
    Readers (restore, verify, mount) may go on without a lock (see repo/locks.py)."""


@runtime_checkable
class ObjectStore(Protocol):
    """Where a repository's objects live. Methods are thread safe; every failure is an
    hcbak.errors type naming `location` (missing object -> ObjectMissingError, no space
    -> NoSpaceError, refused write -> ReadOnlyStoreError, else RepoError)."""

    location: str  # for messages and locks: "/srv/repo" or "s3://bucket/prefix"
    local_root: Path | None  # a folder store's root (O_DIRECT/pread fast paths); else None

    def get(self, key: str) -> bytes:
        """The whole object; ObjectMissingError when it does not exist."""
        ...

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """`length` bytes from `offset`; fewer only where the object ends first."""
        ...

    def size(self, key: str) -> int | None:
        """The object's length in bytes, None when it does not exist."""
        ...

    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> bool:
        """Store `data` as `key`: atomic (readers see all or nothing) and durable when it
        returns. With `if_absent` an existing key is left alone and False is returned
        (write-once names, lock creation); otherwise an existing object is replaced."""
        ...

    def spool(self, prefix: str) -> Spool:
        """A new local temp file for an object under `prefix` (e.g. "packs/")."""
        ...

    def commit_spool(self, spool: Spool, key: str) -> bool:
        """Make the spooled bytes object `key`, durably, write-once (an existing `key`
        is kept: content-addressed names mean equal bytes; then False). The spool is
        closed and its local file gone afterwards, whatever happened."""
        ...

    def list(self, prefix: str) -> Iterator[str]:
        """Keys starting with `prefix`, sorted; never temp names."""
        ...

    def list_sizes(self, prefix: str) -> Iterator[tuple[str, int]]:
        """`list` with each object's size: one listing, not a request per object (an
        object store's listing carries sizes; `repo show` sums every pack's)."""
        ...

    def delete(self, key: str) -> None:
        """Remove `key` durably; a key that does not exist is fine."""
        ...

    def remove_temp(self) -> int:
        """Delete leftovers of crashed writers; returns how many (exclusive lock only)."""
        ...

    def create(self) -> None:
        """Prepare an empty repository location (a folder and its subfolders; a bucket
        must exist). RepoLocationError when it is not usable or not empty."""
        ...


def object_name(store: ObjectStore, key: str) -> str:
    """How messages name an object: its file path, or its URL on an object store."""
    return f"{store.location.rstrip('/')}/{key}"


class Spool:
    """A local temp file being filled with one big object (not thread safe: the writer
    serialises appends). `flush_early`: fdatasync as it grows (where the spool becomes
    the object itself, so the commit's fsync has little left to wait for)."""

    def __init__(self, path: Path, *, flush_early: bool = False) -> None:
        self.path = path
        self.size = 0
        self.fd = fsio.open_private(path, os.O_WRONLY | os.O_EXCL)
        self._flusher = _EarlyFlush(self.fd) if flush_early else None

    def write(self, parts: list[bytes]) -> int:
        """Append the pieces (one writev); returns how many bytes. OSError as raised."""
        done = fsio.write_all(self.fd, parts)
        self.size += done
        if self._flusher is not None:
            self._flusher.grew_to(self.size)
        return done

    def read(self, offset: int, length: int) -> bytes:
        """Read back bytes already written (a blob of a pack not yet committed).
        FileNotFoundError once the spool was committed or discarded."""
        with open(self.path, "rb") as fh:
            fh.seek(offset)
            return fh.read(length)

    def close(self, *, sync: bool) -> None:
        """Stop writing: wait for the early flush (raising its error), fsync when `sync`,
        drop the written pages from the page cache, close the file."""
        fd = self.fd
        if fd < 0:
            return
        try:
            if self._flusher is not None:
                self._flusher.wait()
            if sync:
                fsio._fsync(fd)
                fsio.drop_cache(fd)
        finally:
            self.fd = -1
            try:
                if self._flusher is not None:
                    self._flusher.wait()  # never close (or reuse) an fd a flush still uses
            except OSError:
                pass
            finally:
                os.close(fd)

    def discard(self) -> None:
        """Drop the spool and its file (an aborted pack: never commit half an object)."""
        try:
            self.close(sync=False)
        except OSError:
            pass
        fsio.remove_quietly(self.path)


class _EarlyFlush:
    """fdatasync of a growing spool in a helper thread, one at a time.

    Only ever early: the commit still fsyncs the whole file before the rename. A failed
    early flush is kept and raised by the next write or the commit, because Linux
    reports a writeback error to one fsync caller only, and the commit's fsync could
    then succeed on data that never reached the disk.
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
                return  # the disk is behind: the next write starts the next flush
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
