"""Read a disk (a hot-added block device on the worker, or a file) by offset.

`os.pread` releases the GIL and needs no shared file position, so several pipeline
threads read one device at once. Regular files (the simulator, or a worker whose
device is backed by a sparse file) can tell us where their holes are (SEEK_DATA /
SEEK_HOLE): a full read then skips never-written regions without reading them. A real
block device reports everything as data (or refuses the whence value); then every
block is read and all-zero blocks are recognised after the read.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from hcbak.errors import TransportError

ByteRange = tuple[int, int]


class DiskReader:
    """An open device; `pread` pads short reads at the end with zeros."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise TransportError(f"cannot open device {self.path}: {exc.strerror}")
        st = os.fstat(self._fd)
        self._regular = stat.S_ISREG(st.st_mode)
        self.size = st.st_size if self._regular else os.lseek(self._fd, 0, os.SEEK_END)

    def pread(self, offset: int, length: int) -> bytes:
        """Exactly `length` bytes: what the device has, then zeros past its end."""
        try:
            data = os.pread(self._fd, length, offset)
        except OSError as exc:
            raise TransportError(f"read error on {self.path} at {offset}: {exc.strerror}")
        if len(data) < length:
            data = self._fill_short(data, offset, length)
        return data

    def _fill_short(self, data: bytes, offset: int, length: int) -> bytes:
        # A short read before the end of the device is retried; at the end, pad.
        parts = [data]
        got = len(data)
        while got < length and offset + got < self.size:
            more = os.pread(self._fd, length - got, offset + got)
            if not more:
                break
            parts.append(more)
            got += len(more)
        parts.append(bytes(length - got))
        return b"".join(parts)

    def data_ranges(self, spans: Iterable[ByteRange] | None = None) -> list[ByteRange] | None:
        """Byte ranges that may hold data (within `spans`, default the whole device), or
        None when the device cannot tell holes.

        An incremental names a few MiB of a disk: probing only those spans costs two
        lseeks per extent instead of a walk over every extent of the device.
        """
        if not self._regular:
            return None
        ranges: list[ByteRange] = []
        try:
            for low, high in spans if spans is not None else [(0, self.size)]:
                pos, high = low, min(high, self.size)
                while pos < high:
                    try:
                        start = os.lseek(self._fd, pos, os.SEEK_DATA)
                    except OSError as exc:
                        if exc.errno == errno.ENXIO:  # no data after pos, in any span
                            return ranges
                        raise
                    if start >= high:
                        break
                    end = os.lseek(self._fd, start, os.SEEK_HOLE)
                    ranges.append((start, min(end, high)))
                    pos = end
        except OSError:
            return None  # filesystem without SEEK_DATA support: read everything
        return ranges

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> DiskReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def blocks_with_data(ranges: list[ByteRange], block_size: int) -> list[tuple[int, int]]:
    """Block ranges [first, end) touching any data range (sorted, merged)."""
    out: list[tuple[int, int]] = []
    for start, end in ranges:
        if end <= start:
            continue
        first, last = start // block_size, -(-end // block_size)
        if out and first <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], last))
        else:
            out.append((first, last))
    return out
