"""The rich live view of `hcbak job run` on a TTY (imported only when one is shown)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.progress import ProgressColumn, Task, TaskID
from rich.text import Text

if TYPE_CHECKING:
    from hcbak.engine.progress import ProgressEvent


class _MiBPerSecond(ProgressColumn):
    """Read speed in MiB/s (binary units, as everywhere else in hcbak)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- MiB/s" if speed is None else f"{speed / (1 << 20):.1f} MiB/s")


class LiveDisplay:
    """A rich live view: one bar per VM disk with MiB/s and ETA, on stderr."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            _MiBPerSecond(),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.tasks: dict[tuple[str, str | None, str | None], tuple[TaskID, int]] = {}
        self.lock = threading.Lock()

    def __enter__(self) -> LiveDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def event(self, ev: ProgressEvent) -> None:
        key = (ev.job, ev.vm, ev.disk)
        with self.lock:
            if ev.kind == "disk_start":
                desc = escape(f"{ev.vm} {ev.disk} [{ev.message}]")
                total = max(ev.total, 1)
                self.tasks[key] = (self.progress.add_task(desc, total=total), total)
            elif ev.kind == "disk_progress" and key in self.tasks:
                self.progress.advance(self.tasks[key][0], ev.done)
            elif ev.kind == "disk_done" and key in self.tasks:
                task, total = self.tasks[key]
                self.progress.update(task, completed=total)
            elif ev.kind in ("vm_done", "vm_retry", "warning", "job_start", "copy"):
                label = f"{ev.job}/{ev.vm}" if ev.vm else ev.job
                what = "warning: " if ev.kind == "warning" else ""
                self.progress.console.print(escape(f"{label}: {what}{ev.message}"))
