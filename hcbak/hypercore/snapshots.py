"""Snapshots and their disks: create (once per label), diff, clone onto a worker, delete.

A snapshot's label is its idempotency key: `create_snapshot` never makes two with one
label, whatever answer was lost. The clone of a snapshot disk is what the hot-add
transport reads (transport/hotadd.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from hcbak.errors import APIError, QuiesceRefusedError
from hcbak.hypercore import tasks
from hcbak.hypercore.failover import MaybeProcessedError, backoff_delay
from hcbak.hypercore.intervals import PairArray, parse_snap_diff
from hcbak.hypercore.quiesce import QUIESCE_REFUSED_STATUS, QUIESCE_SNAPSHOT_PATH
from hcbak.hypercore.records import Snapshot
from hcbak.hypercore.replies import check_status, created_uuid, json_body
from hcbak.hypercore.session import ClientSession

log = logging.getLogger("hcbak.hypercore")

# What a node answers to a mutation on a VM that still has a task running (API notes).
VM_BUSY_STATUS = 500


class SnapshotCalls(ClientSession):
    """The snapshot and block-device calls of `HyperCoreClient`."""

    # --- snapshots --------------------------------------------------------------------
    def list_snapshots(self, vm_uuid: str | None = None) -> list[Snapshot]:
        """All snapshots, filtered client-side: the server rejects `?domainUUID=` (400)."""
        snaps = [Snapshot.from_api(x) for x in self._get_list("/VirDomainSnapshot")]
        return [s for s in snaps if vm_uuid is None or s.vm_uuid == vm_uuid]

    def get_snapshot(self, uuid: str) -> Snapshot | None:
        """One snapshot by uuid (GET by uuid answers an array, `[]` or 404 when gone):
        not the list of every snapshot, which grows with the cluster (issue 21)."""
        items = self._get_list(f"/VirDomainSnapshot/{quote(uuid)}", missing_ok=True)
        return Snapshot.from_api(items[0]) if items else None

    def find_snapshot(self, vm_uuid: str, label: str) -> Snapshot | None:
        return next((s for s in self.list_snapshots(vm_uuid) if s.label == label), None)

    def create_snapshot(
        self,
        vm_uuid: str,
        label: str,
        *,
        accepted: Callable[[str], None] | None = None,
        quiesce: bool = False,
        new_label: bool = False,
    ) -> Snapshot:
        """A USER snapshot with a run-unique label; never two with the same label.

        `quiesce` asks for an application-consistent snapshot: the same body plus
        `attemptQuiesce: true`, POSTed to the v2 API (HyperCore 9.7.1+; the caller
        decides with hypercore/quiesce.py). A 4xx answer to that (a cluster without the
        v2 call or the field) raises QuiesceRefusedError: nothing was started, and the
        caller asks again without it.

        The label is the idempotency key: it is looked up before the first POST and
        before every re-POST. `new_label`: the caller just made the label (a fresh
        point id), so nothing can have it yet and the look before the first POST is
        skipped: each look lists every snapshot of the cluster, and once per VM that
        made a run's API traffic grow with VMs x snapshots (issue 21).
        `replication: false` always: the API default true would
        ship the snapshot to the replication target. `accepted(task tag)` runs once the
        cluster took the request, before the task (and so the snapshot) is done; once
        the run is being stopped (`cancel`) that task is journaled and not waited for.

        A 500 *answer* is the cluster refusing: it answers so to a mutation on a VM
        that has a task running ("VM busy": another job's snapshot, a dead run's task;
        API notes). No task was started, so no label will appear: one look, then a
        re-POST after the backoff, and after `rounds` refusals the VM fails saying so.
        Only a lost answer (timeout, reset, 504) waits for the label for as long as an
        answer was allowed to take.
        """
        existing = None if new_label else self.find_snapshot(vm_uuid, label)
        if existing:
            return existing
        body = snapshot_body(vm_uuid, label, quiesce=quiesce)
        last: MaybeProcessedError | None = None
        refusals, started = 0, self._clock()
        for attempt in range(self.pool.rounds):
            if attempt:
                self._pause(backoff_delay(attempt))
                found = self.find_snapshot(vm_uuid, label)  # never a second one
                if found:
                    return found
            try:
                data = self._post_snapshot(body, quiesce=quiesce)
            except MaybeProcessedError as exc:
                last = exc
                if exc.status == VM_BUSY_STATUS:
                    refusals += 1
                    log.info("snapshot of VM %s refused (HTTP 500, VM busy?)", vm_uuid)
                    continue  # the look before the next POST is the bounded wait
                log.debug("snapshot POST outcome unknown (%s); looking for label %s", exc, label)
                found = self._await_label(vm_uuid, label)
                if found:
                    return found
                continue
            return self._await_snapshot(data, vm_uuid, label, accepted)
        found = self.find_snapshot(vm_uuid, label)
        if found:
            return found
        assert last is not None
        if refusals == self.pool.rounds:
            raise self._refused(vm_uuid, refusals, self._clock() - started)
        raise last

    def _post_snapshot(self, body: dict[str, Any], *, quiesce: bool) -> Any:
        """One POST of a snapshot request; its answer (`{taskTag, createdUUID}`).

        A quiesced one goes to the v2 API, and a 4xx to it is QuiesceRefusedError."""
        if not quiesce:
            return self._call("POST", "/VirDomainSnapshot", json=body, idempotent=False)
        resp = self.pool.send(
            "POST", QUIESCE_SNAPSHOT_PATH, json=body, idempotent=False, rest=False
        )
        what = f"POST {QUIESCE_SNAPSHOT_PATH} (attemptQuiesce)"
        try:
            check_status(resp, what, self.cluster.username)
        except APIError as exc:
            if exc.status in QUIESCE_REFUSED_STATUS:
                raise QuiesceRefusedError(exc.message, status=exc.status) from None
            raise
        return json_body(resp, what)

    def _await_snapshot(
        self, data: Any, vm_uuid: str, label: str, accepted: Callable[[str], None] | None
    ) -> Snapshot:
        """After an accepted POST: tell `accepted`, wait for the task, read the record."""
        result = data if isinstance(data, dict) else {}
        if accepted is not None and result.get("taskTag"):
            accepted(str(result["taskTag"]))
        self.wait_task(
            result.get("taskTag"), what=f"snapshot {label!r} of VM {vm_uuid}", cancellable=True
        )
        uuid = str(result.get("createdUUID") or "")
        # By its uuid (one record); by its label in the list of every snapshot only
        # where that finds nothing (a build without GET by uuid for snapshots).
        snap = self.get_snapshot(uuid) if uuid else None
        if snap is None:
            snap = self.find_snapshot(vm_uuid, label)
        if snap is None:
            raise APIError(f"snapshot {label!r} of VM {vm_uuid} vanished after creation")
        return snap

    def _refused(self, vm_uuid: str, refusals: int, waited: float) -> APIError:
        """The failure of a VM that refused every round (busy with another task)."""
        return APIError(
            f"snapshot of VM {vm_uuid} refused: the cluster answered HTTP 500 to "
            f"{refusals} request(s) in {waited:.1f} s",
            status=VM_BUSY_STATUS,
            hint="the VM is busy with another task (another job's snapshot, a "
            "restore); the job's retries try again",
        )

    def _await_label(self, vm_uuid: str, label: str) -> Snapshot | None:
        """After an unknown outcome, look for the label for as long as a response was
        allowed to take (read timeout, at least 1 s): the record may appear only when
        the snapshot task ends, and a re-POST before then could make a duplicate.
        A stopping run stops looking (the snapshot request journal covers it)."""
        return tasks.poll_until(
            lambda: self.find_snapshot(vm_uuid, label),
            max(1.0, float(self.cluster.read_timeout)),
            first=0.1,
            sleep=self._pause,
            clock=self._clock,
        )

    def delete_snapshot(self, uuid: str) -> None:
        self._delete(f"/VirDomainSnapshot/{quote(uuid)}", what=f"delete snapshot {uuid}")

    def snap_diff(self, disk_uuid: str, serial_from: int, serial_to: int) -> PairArray:
        """Changed byte intervals [lower, upper) between two serials (0 = live disk),
        held compactly (16 bytes each: a long change list must not cost a dict per
        interval, hypercore/intervals.py).

        Read-only on the cluster, so it is retried like a GET.
        """
        body = {"snapshotSerialFrom": int(serial_from), "snapshotSerialTo": int(serial_to)}
        path = f"/VirDomainBlockDevice/{quote(disk_uuid)}/snapDiff"
        resp = self.pool.send("POST", path, json=body, idempotent=True)
        check_status(resp, f"POST {path}", self.cluster.username)
        return parse_snap_diff(resp.content, f"POST {path}")

    # --- block devices ----------------------------------------------------------------
    def clone_snapshot_disk(
        self,
        disk_uuid: str,
        snapshot_uuid: str,
        worker_vm_uuid: str,
        capacity: int,
        *,
        accepted: Callable[[str, str], None] | None = None,
    ) -> str:
        """Hot-add a copy-on-write clone of a snapshot disk to the worker VM.

        `accepted(clone uuid, task tag)` runs once the cluster took the request, before
        the clone exists: the device appears only when the task is done.
        """
        body = clone_body(snapshot_uuid, worker_vm_uuid, capacity)
        path = f"/VirDomainBlockDevice/{quote(disk_uuid)}/clone"

        def created(result: dict[str, Any]) -> None:
            if accepted is not None:
                accepted(created_uuid(result, f"POST {path}"), str(result.get("taskTag") or ""))

        what = f"clone of disk {disk_uuid}"
        result = self._mutate("POST", path, body, what=what, accepted=created)
        return created_uuid(result, f"POST {path}")

    def delete_block_device(self, uuid: str) -> None:
        self._delete(f"/VirDomainBlockDevice/{quote(uuid)}", what=f"delete block device {uuid}")


def snapshot_body(vm_uuid: str, label: str, *, quiesce: bool) -> dict[str, Any]:
    """The body of a snapshot request. `replication: false` always: the API default
    true would ship the snapshot to the replication target."""
    body: dict[str, Any] = {
        "domainUUID": vm_uuid,
        "label": label,
        "type": "USER",
        "replication": False,
    }
    if quiesce:
        body["attemptQuiesce"] = True
    return body


def clone_body(snapshot_uuid: str, worker_vm_uuid: str, capacity: int) -> dict[str, Any]:
    """The body of `POST /VirDomainBlockDevice/{disk}/clone`, kept in one place because
    its shape differs between builds (older builds: `snapshotUUID`)."""
    return {
        "snapUUID": snapshot_uuid,
        # Keep the disk id: the clone is read by serial under /dev/disk/by-id.
        "options": {"regenerateDiskID": False},
        "template": {
            "virDomainUUID": worker_vm_uuid,
            "type": "VIRTIO_DISK",
            "capacity": int(capacity),
        },
    }
