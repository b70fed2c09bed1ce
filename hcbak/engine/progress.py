"""What a backup run tells its caller while it runs: `ProgressEvent`s.

Engine code never prints. A job run reports each step through a `ProgressFn` (the CLI
shows them: a rich live view on a TTY, one line per event otherwise) and logs it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ProgressEvent:
    """What the CLI shows: kind is job_start, vm_start, disk_start, disk_progress,
    disk_done, vm_done, vm_retry, warning, job_done."""

    kind: str
    job: str
    vm: str | None = None
    disk: str | None = None
    message: str = ""
    done: int = 0  # bytes processed (disk_progress: since the last event)
    total: int = 0  # bytes to process on this disk

    def line(self) -> str:
        """`job/vm disk: what: message`, as the plain display and the run log show it."""
        where = self.job + (f"/{self.vm}" if self.vm else "")
        where += f" {self.disk}" if self.disk else ""
        what = _EVENT_WORDS.get(self.kind, self.kind)
        return f"{where}: {what}{': ' + self.message if self.message else ''}"


_EVENT_WORDS = {
    "job_start": "job started",
    "vm_start": "backing up",
    "disk_start": "reading",
    "disk_done": "done",
    "vm_done": "finished",
    "vm_retry": "retry",
    "warning": "warning",
}


ProgressFn = Callable[[ProgressEvent], None]


def no_progress(event: ProgressEvent) -> None:
    pass


class Display(Protocol):
    """Where a run's events go: entered while the jobs run, `event` for each one."""

    def __enter__(self) -> Display: ...

    def __exit__(self, *exc: object) -> None: ...

    def event(self, ev: ProgressEvent) -> None: ...
