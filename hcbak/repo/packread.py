"""Reading one blob frame of a committed pack (get_block's path, the restore's speed).

On a folder store the packs are read as files, with the fast paths a restore needs:
O_DIRECT into a reused aligned buffer and a per-thread LRU of open pack handles. On any
other store a frame is one ranged read of the pack object.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
from collections import OrderedDict
from typing import BinaryIO

from hcbak.errors import IntegrityError, RepoError
from hcbak.repo.index import Location
from hcbak.repo.pack import pack_key
from hcbak.repo.storage.base import ObjectMissingError, ObjectStore

OPEN_PACKS_PER_THREAD = 8
DIRECT_ALIGN = 4096  # O_DIRECT offsets, lengths and buffers: the largest common sector


class MissingPackError(IntegrityError):
    """A pack the index names is not there: no copy to set aside as damaged."""


class FrameReader:
    """Reads blob frames; thread safe (every cache is per thread)."""

    def __init__(self, store: ObjectStore, block_size: int) -> None:
        self.store = store
        self._block_size = block_size
        self._local = threading.local()
        self._direct_reads = store.local_root is not None and hasattr(os, "O_DIRECT")

    def read(self, loc: Location) -> bytes | memoryview:
        """A blob frame. Read directly it is a view into this thread's read buffer,
        valid until this thread's next read: get_block decodes it at once."""
        try:
            frame: bytes | memoryview | None = None
            if self._direct_reads:
                frame = self._read_direct(loc)
            if frame is None:
                frame = self._read_plain(loc)
        except (FileNotFoundError, ObjectMissingError):
            raise MissingPackError(f"pack {loc.pack} is missing")
        except OSError as exc:
            raise RepoError(f"could not read pack {loc.pack}: {exc.strerror or exc}")
        if len(frame) != loc.length:
            raise IntegrityError(f"pack {loc.pack} is truncated")
        return frame

    def _read_plain(self, loc: Location) -> bytes:
        if self.store.local_root is None:
            return self.store.get_range(pack_key(loc.pack), loc.offset, loc.length)
        fh = self._pack_handle(loc.pack, direct=False)
        return os.pread(fh.fileno(), loc.length, loc.offset)

    def _read_direct(self, loc: Location) -> memoryview | None:
        """Read with O_DIRECT into a reused aligned buffer; None where unsupported.

        A restore reads each pack once. Through the page cache every MiB would take
        fresh cache pages (on a VM whose free memory goes back to the hypervisor, each
        costs microseconds) and a second copy, and it would evict what the host keeps
        cached. Filesystems without O_DIRECT (tmpfs, some network mounts) answer
        EINVAL; reads then go through the cache for the rest of the session.
        """
        start = loc.offset - loc.offset % DIRECT_ALIGN
        end = -(-(loc.offset + loc.length) // DIRECT_ALIGN) * DIRECT_ALIGN
        buf: mmap.mmap | None = getattr(self._local, "direct_buf", None)
        if buf is None or len(buf) < end - start:
            size = max(end - start, 2 * int(self._block_size) + 2 * DIRECT_ALIGN)
            buf = self._local.direct_buf = mmap.mmap(-1, size)
        try:
            fh = self._pack_handle(loc.pack, direct=True)
            n = os.preadv(fh.fileno(), [memoryview(buf)[: end - start]], start)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self._direct_reads = False
            return None
        got = max(0, min(n - (loc.offset - start), loc.length))
        return memoryview(buf)[loc.offset - start : loc.offset - start + got]

    def _pack_handle(self, pack: str, *, direct: bool) -> BinaryIO:
        """A per-thread LRU of open packs: a restore reads many blocks from each pack,
        and opening a file per block is slow on NFS. Per thread, so no handle is ever
        closed while another thread reads from it."""
        key = "direct" if direct else "packs"
        cache: OrderedDict[str, BinaryIO] | None = getattr(self._local, key, None)
        if cache is None:
            cache = OrderedDict()
            setattr(self._local, key, cache)
        fh = cache.get(pack)
        if fh is not None:
            cache.move_to_end(pack)
            return fh
        assert self.store.local_root is not None  # only folder stores read files
        path = self.store.local_root / pack_key(pack)
        # closed on eviction, at close() (this thread's), or when collected
        fh = open(path, "rb", buffering=0, opener=_open_direct) if direct else open(path, "rb")  # noqa: SIM115
        cache[pack] = fh
        if len(cache) > OPEN_PACKS_PER_THREAD:
            cache.popitem(last=False)[1].close()
        return fh

    def close(self) -> None:
        """Close this thread's pack handles (other threads' close when collected)."""
        for key in ("packs", "direct"):
            cache = getattr(self._local, key, None)
            while cache:
                cache.popitem()[1].close()


def _open_direct(path: str, flags: int) -> int:
    return os.open(path, flags | getattr(os, "O_DIRECT", 0))
