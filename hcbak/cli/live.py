"""The rich live view of `hcbak job run` on a TTY (imported only when one is shown)."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.progress import ProgressColumn, Task, TaskID
from rich.text import Text

if TYPE_CHECKING:
    from rich.console import Console

    from hcbak.engine.progress import ProgressEvent


class _MiBPerSecond(ProgressColumn):
    """Read speed in MiB/s (binary units, as everywhere else in hcbak)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- MiB/s" if speed is None else f"{speed / (1 << 20):.1f} MiB/s")


class LiveDisplay:
    """A rich live view on stderr: a line of counts (running, ok, warning, failed),
    one bar per disk being read with MiB/s and ETA (gone once read), and above them
    the events that need a look (failures, retries, warnings). A 200-VM job shows its
    few running VMs and the counts, not 200 rows (issue 21)."""

    def __init__(self, console: Console | None = None) -> None:
        from rich.console import Console, RenderableType
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.running: set[tuple[str, str]] = set()
        self.warned: set[tuple[str, str]] = set()
        self.counts = {"ok": 0, "warning": 0, "failed": 0}
        self.job = ""
        display = self

        class _JobProgress(Progress):
            def get_renderables(self) -> Iterable[RenderableType]:
                yield Text(display.header())
                yield self.make_tasks_table(self.tasks)

        self.console = console or Console(stderr=True)
        self.progress = _JobProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            _MiBPerSecond(),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.tasks: dict[tuple[str, str | None, str | None], tuple[TaskID, int]] = {}
        self.lock = threading.Lock()

    def header(self) -> str:
        c = self.counts
        return (
            f"{self.job}: {len(self.running)} running, {c['ok']} ok, "
            f"{c['warning']} warning, {c['failed']} failed"
        )

    def __enter__(self) -> LiveDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def event(self, ev: ProgressEvent) -> None:
        key = (ev.job, ev.vm, ev.disk)
        with self.lock:
            if ev.kind == "job_start":  # jobs run one after another: counts per job
                self.job = ev.job
                self.counts = dict.fromkeys(self.counts, 0)
            if ev.kind == "vm_start" and ev.vm:
                self.running.add((ev.job, ev.vm))
            elif ev.kind == "disk_start":
                desc = escape(f"{ev.vm} {ev.disk} [{ev.message}]")
                total = max(ev.total, 1)
                self.tasks[key] = (self.progress.add_task(desc, total=total), total)
            elif ev.kind == "disk_progress" and key in self.tasks:
                self.progress.advance(self.tasks[key][0], ev.done)
            elif ev.kind == "disk_done" and key in self.tasks:
                task, total = self.tasks.pop(key)
                self.progress.update(task, completed=total)
                self.progress.refresh()  # its end is shown once, then the bar goes
                self.progress.remove_task(task)
            elif ev.kind == "warning" and ev.vm:
                self.warned.add((ev.job, ev.vm))
            elif ev.kind == "vm_done" and ev.vm:
                self._vm_done(ev)
            if ev.kind in ("vm_retry", "warning", "job_start", "copy") or (
                ev.kind == "vm_done" and ev.message.startswith("failed")
            ):
                label = f"{ev.job}/{ev.vm}" if ev.vm else ev.job
                what = "warning: " if ev.kind == "warning" else ""
                self.progress.console.print(escape(f"{label}: {what}{ev.message}"))

    def _vm_done(self, ev: ProgressEvent) -> None:
        vm = (ev.job, ev.vm)
        self.running.discard(vm)
        for key in [k for k in self.tasks if k[:2] == vm]:  # a failed VM's open bars
            self.progress.remove_task(self.tasks.pop(key)[0])
        if ev.message.startswith("failed"):
            self.counts["failed"] += 1
        elif vm in self.warned:
            self.counts["warning"] += 1
        else:
            self.counts["ok"] += 1
