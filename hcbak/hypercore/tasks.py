"""Waiting for HyperCore tasks, in one place.

Mutations return `{"taskTag": ..., "createdUUID": ...}`; the caller must wait until the
task is terminal before the next mutation on the same object, or the cluster answers
with intermittent 500s (API notes). Quirks handled here (from the Ansible collection's
`task_tag.py` and its tests against real clusters): the tag may be an int; an empty tag
means there is nothing to wait for; a missing TaskTag record means finished.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from hcbak.errors import Interrupted, TaskFailedError, TaskTimeoutError
from hcbak.hypercore.records import Task

# Poll quickly first, then back off to spare the API. Snapshots and clones are
# copy-on-write and often end within tens of milliseconds; a backup waits for three of
# them in a row. 5, 8, 13, 20, 33, 52, 84 ms ... 2 s: 10 polls in the first second.
FIRST_POLL = 0.005
MAX_POLL = 2.0


T = TypeVar("T")


def poll_until(
    probe: Callable[[], T | None],
    timeout: float,
    *,
    first: float = FIRST_POLL,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T | None:
    """`probe()` until it answers (not None: returned) or `timeout` seconds pass (None).

    The one backoff every cluster wait uses: from `first`, x1.6 per poll, at most
    MAX_POLL, never past the deadline. `probe` is always asked at least once."""
    deadline = clock() + timeout
    delay = first
    while True:
        found = probe()
        if found is not None or clock() >= deadline:
            return found
        sleep(max(0.0, min(delay, deadline - clock())))
        delay = min(delay * 1.6, MAX_POLL)


def normalize_tag(tag: Any) -> str:
    """Tags arrive as str or int; None/""/"0"-less values mean "nothing to wait for"."""
    if tag is None:
        return ""
    if isinstance(tag, bool):
        return ""
    return str(tag).strip()


def wait_for_task(
    fetch: Callable[[str], list[dict[str, Any]]],
    tag: Any,
    timeout: float,
    *,
    what: str = "task",
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    stopped: Callable[[], bool] | None = None,
) -> Task | None:
    """Poll `fetch(tag)` (the GET /TaskTag/{tag} array) until the task is terminal.

    Returns the final Task, or None when there was nothing to wait for or the record
    vanished. Raises TaskFailedError on ERROR/UNINITIALIZED (with the rendered message)
    or when `timeout` seconds pass. Raises Interrupted, with the task still running, once
    `stopped()` is true: the caller has journaled the task and leaves what it makes to
    the next run rather than keep a stopping process waiting for it.
    """
    norm = normalize_tag(tag)
    if not norm:
        return None
    deadline = clock() + timeout
    delay = FIRST_POLL
    while True:
        records = fetch(norm)
        if not records:
            return None  # a missing record counts as finished (API notes)
        task = Task.from_api(records[0])
        if task.failed:
            detail = f": {task.message}" if task.message else ""
            raise TaskFailedError(f"{what} failed (task {norm}, state {task.state}){detail}")
        if task.finished:
            return task
        if stopped is not None and stopped():
            raise Interrupted(f"interrupted while the {what} ran (task {norm})")
        if clock() >= deadline:
            raise TaskTimeoutError(
                f"{what} did not finish within {timeout:g} s (task {norm}, state {task.state})",
                hint="raise task_timeout in the cluster config if the cluster is just slow",
            )
        sleep(min(delay, max(0.0, deadline - clock())))
        delay = min(delay * 1.6, MAX_POLL)
