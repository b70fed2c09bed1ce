"""Hot-add: a snapshot disk, cloned onto the worker VM, read as a local block device.

`HotAdd` clones one disk of a snapshot onto the worker (copy-on-write, on the
cluster), finds the device it became (device.py) and removes the clone again when
done. Everything it touches is given to it: the cluster calls (`CloneClient`), the
worker (its uuid, device folder and the lock that keeps one hot-add or removal at a
time) and the journal that lets the next run find a clone a crashed run left behind.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from hcbak.errors import HcbakError, NotFoundError
from hcbak.transport.device import list_devices, locate_device

log = logging.getLogger("hcbak.transport")


class _HasUuid(Protocol):
    @property
    def uuid(self) -> str: ...


class _HasDisks(Protocol):
    @property
    def disks(self) -> Sequence[_HasUuid]: ...


class CloneClient(Protocol):
    """The cluster calls a hot-add makes (hypercore.HyperCoreClient has them)."""

    def get_vm(self, uuid: str) -> _HasDisks: ...

    def clone_snapshot_disk(
        self,
        disk_uuid: str,
        snapshot_uuid: str,
        worker_vm_uuid: str,
        capacity: int,
        *,
        accepted: Callable[[str, str], None] | None = None,
    ) -> str: ...

    def delete_block_device(self, uuid: str) -> None: ...


class CloneJournal(Protocol):
    """Where clones are recorded while they exist (engine/state.py's clone journal)."""

    def record(self, key: str, entry: Mapping[str, Any]) -> None: ...

    def forget(self, key: str) -> None: ...


@dataclass(frozen=True)
class Worker:
    """The VM hcbak runs on, where clones are attached."""

    vm_uuid: str
    device_root: Path  # where its block devices appear (/dev; the simulator's folder)
    lock: AbstractContextManager[object]  # one hot-add or removal at a time
    journal: CloneJournal


class HotAdd:
    """Context manager: hot-add a snapshot disk to the worker, yield its device path,
    always remove it again. Journaled so a crashed run's clone is found next time.

    `owner` goes into the journal entry (the cluster and job it belongs to). With
    `removals` given, the removal runs in the background and its future lands there.
    """

    def __init__(
        self,
        client: CloneClient,
        worker: Worker,
        disk_uuid: str,
        snapshot_uuid: str,
        capacity: int,
        *,
        owner: Mapping[str, str],
        removals: list[Future[None]] | None = None,
    ) -> None:
        self.client = client
        self.worker = worker
        self.disk_uuid = disk_uuid
        self.snapshot_uuid = snapshot_uuid
        self.capacity = capacity
        self.owner = dict(owner)
        self.removals = removals
        self.clone_uuid: str | None = None
        self.path: Path | None = None
        self.handed_over = False  # entered by a `with`, whose end removes the clone

    def __enter__(self) -> Path:
        self.handed_over = True
        return self.path if self.path is not None else self.open()

    def open(self) -> Path:
        """Make the clone and find its device (before a `with` that uses it, or by it)."""
        worker, journal = self.worker, self.worker.journal
        info = {
            **self.owner,
            "snapshot": self.snapshot_uuid,
            "disk": self.disk_uuid,
            "capacity": self.capacity,
            "worker": worker.vm_uuid,
        }
        # A "pending" entry with the worker's disks before the call lets the next run
        # find a clone whose run died before the cluster answered (the only disk that
        # appeared and has this capacity). Once it answers, the entry names the clone and
        # its task: the device appears only when the task is done, possibly after this
        # run died and the next one looked, so the next run waits for that task first.
        pending = f"pending-{os.urandom(8).hex()}"

        def accepted(clone_uuid: str, task: str) -> None:
            journal.record(clone_uuid, {**info, "task": task})
            journal.forget(pending)

        with worker.lock:
            before = list_devices(worker.device_root)
            worker_disks = [d.uuid for d in self.client.get_vm(worker.vm_uuid).disks]
            journal.record(pending, {**info, "pending": True, "worker_disks": worker_disks})
            # On failure the entry stays: a POST whose answer was lost may still have
            # created the clone, and the next run removes it.
            self.clone_uuid = self.client.clone_snapshot_disk(
                self.disk_uuid,
                self.snapshot_uuid,
                worker.vm_uuid,
                self.capacity,
                accepted=accepted,
            )
        try:
            self.path = locate_device(
                worker.device_root, self.clone_uuid, self.capacity, before=before
            )
        except BaseException:
            self._remove()
            raise
        return self.path

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove the clone (in the background when `removals` was given)."""
        if self.removals is None or self.clone_uuid is None:
            self._remove()
            return
        remover = ThreadPoolExecutor(1, thread_name_prefix="hcbak-unclone")
        self.removals.append(remover.submit(self._remove))
        remover.shutdown(wait=False)  # its one thread ends after the removal

    def _remove(self) -> None:
        if self.clone_uuid is None:
            return
        uuid, self.clone_uuid = self.clone_uuid, None
        try:
            with self.worker.lock:
                self.client.delete_block_device(uuid)
        except NotFoundError:
            pass
        except HcbakError as exc:
            log.warning("could not remove clone %s: %s (removed next run)", uuid, exc.one_line())
            return
        self.worker.journal.forget(uuid)
