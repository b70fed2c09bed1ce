"""External sort of fixed-size records: memory stays at one bucket whatever the count.

Why: the index cache's build and prune each sort millions of records (index entries,
referenced block ids, live blobs by pack). Sorting them as Python objects costs ~100
bytes per record (500 MiB at 5 M); here a sorter keeps up to `in_memory` records, then
spills every record to one of 256 bucket files by its first byte and sorts each bucket
on its own when read back. Keys must start with a uniform byte (block ids and pack ids
are hashes), so a bucket holds ~1/256 of the records.

With `unique`, repeated records are dropped: in memory by a set (so repeated ids from
many restore points of one disk cost nothing while they fit), on disk per bucket.
Bucket files live in a private temp folder under `folder` (local disk: the state dir),
removed by `close`; one left by a killed process (its name holds the pid) is removed by
the next sorter that spills there.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from hcbak.repo import fsio
from hcbak.repo.holders import pid_alive

BUCKETS = 256
SORT_PREFIX = fsio.TMP_PREFIX + "sort-"  # + pid + "-" + random: a sorter's bucket folder
IN_MEMORY = 200_000  # records kept (and sorted) in memory before the first spill
_READ = 1 << 20


class RecordSorter:
    """Collect records of `size` bytes, then read them back sorted (bytewise)."""

    def __init__(
        self, folder: Path | None, size: int, *, unique: bool = False, in_memory: int = IN_MEMORY
    ) -> None:
        self.folder, self.size, self.unique, self.in_memory = folder, size, unique, in_memory
        self.count = 0  # records added (with `unique`: at most this many distinct)
        self._memory: set[bytes] | list[bytes] = set() if unique else []
        self._dir: Path | None = None
        self._files: list[BinaryIO] = []

    def __enter__(self) -> RecordSorter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def spilled(self) -> bool:
        return self._dir is not None

    def add(self, records: Iterable[bytes]) -> None:
        before = len(self._memory)
        if isinstance(self._memory, set):
            self._memory.update(records)
        else:
            self._memory.extend(records)
        self.count += len(self._memory) - before  # a set counts only what it kept
        if len(self._memory) > self.in_memory:
            self._spill()

    def _spill(self) -> None:
        if self._dir is None:
            if self.folder is not None:
                fsio.make_private_dir(self.folder, parents=True)
            remove_stale(Path(self.folder or tempfile.gettempdir()))
            prefix = f"{SORT_PREFIX}{os.getpid()}-"
            self._dir = Path(tempfile.mkdtemp(prefix=prefix, dir=self.folder))
            self._files = [_create(self._dir / f"{b:02x}") for b in range(BUCKETS)]
        files = self._files
        for r in self._memory:
            files[r[0]].write(r)
        self._memory.clear()

    def chunks(self) -> Iterator[bytes]:
        """The records sorted, as concatenated pieces (one per bucket once spilled)."""
        if self._dir is None:
            yield b"".join(sorted(self._memory))
            return
        self._spill()
        for fh in self._files:
            fh.close()
        for b in range(BUCKETS):
            yield b"".join(self._bucket(self._dir / f"{b:02x}"))

    def _bucket(self, path: Path) -> list[bytes]:
        size = self.size
        if not self.unique:
            data = path.read_bytes()
            return sorted(data[i : i + size] for i in range(0, len(data), size))
        seen: set[bytes] = set()
        with open(path, "rb") as fh:
            while piece := fh.read(_READ - _READ % size):
                seen.update(piece[i : i + size] for i in range(0, len(piece), size))
        return sorted(seen)

    def records(self) -> Iterator[bytes]:
        """The records sorted, one at a time."""
        size = self.size
        for chunk in self.chunks():
            for i in range(0, len(chunk), size):
                yield chunk[i : i + size]

    def close(self) -> None:
        for fh in self._files:
            fh.close()
        self._files = []
        self._memory = set() if self.unique else []
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def remove_stale(folder: Path) -> None:
    """Delete the bucket folders of sorters whose process is gone (killed: `close` never
    ran). A folder names its process; a live one's is never touched."""
    try:
        names = [p for p in folder.iterdir() if p.name.startswith(SORT_PREFIX)]
    except OSError:
        return
    for path in names:
        pid = path.name.removeprefix(SORT_PREFIX).partition("-")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _create(path: Path) -> BinaryIO:
    """A new private file (0600 whatever the umask: the state dir is this user's)."""
    return os.fdopen(fsio.open_private(path, os.O_WRONLY | os.O_EXCL), "wb")
