"""What crashed or killed runs of a job left behind, found and removed by the next run.

Only what hcbak journaled or labelled is touched: snapshots labelled
`hcbak:<job>:<point>` that are no point's base, clones in the clone journal (never a
disk someone else attached to the worker), snapshot tasks a dead run was waiting for,
and snapshots it asked for just before it died (engine/state.py keeps the journals).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from hcbak.engine.session import label_point_id
from hcbak.engine.state import (
    forget_clone,
    forget_snapshot_request,
    forget_task,
    journaled_clones,
    live_clone_uuids,
    snapshot_requests_of_dead_runs,
    tasks_of_dead_runs,
)
from hcbak.errors import HcbakError, NotFoundError

if TYPE_CHECKING:
    from hcbak.engine.session import Session

log = logging.getLogger("hcbak.engine")
# A clone call's task ends within seconds on a cluster: the clone of a run killed
# during its call is looked for again until the call is this old.
PENDING_SETTLE = 30.0
PENDING_POLL = 0.25


def clean_orphan_snapshots(s: Session) -> None:
    """Remove the hcbak snapshots a crashed run of this job left behind: only labels
    `hcbak:<job>:<point>`, and kept is the one the VM's latest committed point was
    taken from (the next base). Its clones went first (`_clean_orphan_clones`:
    only those in our journal, never a disk someone else attached to the worker).
    """
    keep = {p.snapshot_uuid for p in s.latest.values() if p.snapshot_uuid}
    unreadable = s.repo.unreadable_points  # their snapshots may be all that is left
    for snap in list(s.snapshots.values()):
        point_id = label_point_id(snap.label, s.job.name)
        if point_id is None or point_id in unreadable or snap.uuid in keep:
            continue
        try:
            s.hc.delete_snapshot(snap.uuid)
            s.snapshots.pop(snap.uuid, None)
            s.removed_labels.add(snap.label)
            log.info("removed orphaned snapshot %s (%s)", snap.uuid, snap.label)
        except HcbakError as exc:
            s.warn(f"could not remove orphaned snapshot {snap.label}: {exc.one_line()}")


def remove_dead_runs_requested_snapshots(s: Session) -> None:
    """Snapshots a killed run asked for just before it died, before it learnt their
    task: they may appear after this run looked for orphans, so look again at the
    end. Such a snapshot cannot be any point's base (the point commits after it)."""
    for entry in snapshot_requests_of_dead_runs(s.state_dir, s.job.cluster):
        label, vm_uuid = str(entry["label"]), str(entry["vm"])
        if label_point_id(label, s.job.name) is None:
            continue  # another job's: its own runs look after it
        try:
            found = s.hc.find_snapshot(vm_uuid, label)
            if found is not None:
                s.hc.delete_snapshot(found.uuid)
                log.info("removed snapshot %s (%s) of an interrupted run", found.uuid, label)
        except NotFoundError:
            found = None  # the VM is gone, and its snapshots with it
        except HcbakError as exc:
            log.info("snapshot %s of an interrupted run: %s", label, exc.one_line())
            continue
        age = time.time() - float(entry.get("created") or 0)
        gone = found is not None or label in s.removed_labels
        if gone or age > float(s.cluster_cfg.task_timeout):
            forget_snapshot_request(s.state_dir, label)


def await_dead_runs_tasks(s: Session) -> None:
    """Before looking for what crashed runs left: their snapshot and clone tasks may
    still be running, and what such a task makes appears only when it is done."""
    for task in tasks_of_dead_runs(s.state_dir, s.job.cluster):
        try:
            s.hc.wait_task(task, what="task of an interrupted run")
        except HcbakError as exc:  # failed (nothing made) or too slow: cleanup tells
            log.info("task %s of an interrupted run: %s", task, exc.one_line())
        forget_task(s.state_dir, task)  # a clone's task: its entry stays


def clean_orphan_clones(s: Session) -> None:
    """Remove the clones crashed runs journaled (pending ones: the disks that appeared
    on the worker after their call). Called with the worker lock held."""
    for entry in journaled_clones(s.state_dir, s.job.cluster):
        uuids = [str(entry.get("clone_uuid"))]
        if entry.get("pending"):
            uuids = _pending_clone(s, entry)
        for uuid in uuids:
            try:
                s.hc.delete_block_device(uuid)
                log.info("removed orphaned clone %s", uuid)
            except NotFoundError:
                pass
            except HcbakError as exc:
                s.warn(f"could not remove orphaned clone {uuid}: {exc.one_line()}")
                continue
        forget_clone(s.state_dir, str(entry.get("clone_uuid")))


def _pending_clone(s: Session, entry: dict[str, Any]) -> list[str]:
    """What a run killed during its clone call made. The clone is on the worker only
    once the cluster's task for it ends, and that run never learnt the task: while the
    call is recent (PENDING_SETTLE), look again until something appears. A run that
    comes hours later (cron) looks once; one that died before its call reached the
    cluster costs the next run at most the rest of PENDING_SETTLE."""
    deadline = float(entry.get("created") or 0) + PENDING_SETTLE
    while True:
        uuids = _pending_clone_candidates(s, entry)
        if uuids or time.time() >= deadline:
            return uuids
        log.info("waiting for the clone a crashed run asked for to appear")
        time.sleep(PENDING_POLL)


def _pending_clone_candidates(s: Session, entry: dict[str, Any]) -> list[str]:
    """Disks that appeared on the worker after a crashed run's pending clone call:
    not there before it, of the clone's capacity, and not any live run's clone."""
    worker = str(entry.get("worker") or s.worker_uuid)
    before = set(entry.get("worker_disks") or [])
    live = live_clone_uuids(s.state_dir)
    try:
        disks = s.hc.get_vm(worker).disks
    except NotFoundError:
        return []
    return [
        d.uuid
        for d in disks
        if d.uuid not in before
        and d.uuid not in live
        and int(d.capacity) == int(entry.get("capacity") or -1)
    ]
