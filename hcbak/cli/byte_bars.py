"""`byte_bars()`: the one layout of byte-progress bars on a terminal's stderr.

Commands that move disks or points (restore, repo copy) show the same columns, so a
person reads every one the same way: what, bar, bytes done / total, speed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.progress import Progress


@contextmanager
def byte_bars() -> Iterator[Progress]:
    """A rich `Progress` on stderr with description, bar, bytes and speed columns
    (imported only here: a run without a terminal never loads rich's progress)."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        console=Console(stderr=True),
    ) as bars:
        yield bars
