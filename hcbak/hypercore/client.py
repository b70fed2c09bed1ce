"""`HyperCoreClient`: the operations hcbak needs, over `NodePool` (failover.py).

Responses are turned into records (records.py) here and nowhere else. Every request
has (connect, read) timeouts, task waits go through `wait_task`, and mutations are
repeated only when they provably did not reach the API or after checking their effect.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from hcbak.errors import (
    APIError,
    AuthError,
    ClusterBusyError,
    ClusterError,
    Interrupted,
    NotFoundError,
    QuiesceRefusedError,
    TransportError,
    UsageError,
)
from hcbak.hypercore import tasks
from hcbak.hypercore.failover import MaybeProcessedError, NodePool, backoff_delay
from hcbak.hypercore.intervals import PairArray, parse_snap_diff
from hcbak.hypercore.quiesce import QUIESCE_REFUSED_STATUS, QUIESCE_SNAPSHOT_PATH
from hcbak.hypercore.records import (
    VM,
    ClusterInfo,
    Node,
    Snapshot,
    Task,
    UpdateStatus,
    VirtualDisk,
)
from hcbak.secrets import Secret

if TYPE_CHECKING:
    from hcbak.hypercore.settings import ConnectionSettings

log = logging.getLogger("hcbak.hypercore")

UPLOAD_FORMATS = (".qcow2", ".vmdk", ".vhd", ".vhdx", ".img")
LOGOUT_TIMEOUT_ROUNDS = 1
# What a node answers to a mutation on a VM that still has a task running (API notes).
VM_BUSY_STATUS = 500
# Task poll interval, at most, once the run is being stopped: the clone removals its
# exit waits for end up to 2 s (tasks.MAX_POLL) earlier than they would be noticed.
STOPPING_POLL = 0.1
# A cluster that was never updated has no update_status.json and its web server answers
# 404 with an HTML page (API notes). That is an answer, not doubt: no update runs. Treating
# it as busy would block every backup of a new cluster forever. Everything else that is
# not a clear COMPLETE/COMPLETE (502, timeouts, other statuses, odd JSON) is "not idle".
NEVER_UPDATED_IS_IDLE = True


@contextlib.contextmanager
def hypercore_session(
    cluster_cfg: ConnectionSettings, *, warn: Callable[[str], None] | None = None
) -> Iterator[HyperCoreClient]:
    """Log in (resolving the password reference), yield the client, always log out."""
    password = cluster_cfg.password.resolve()
    client = HyperCoreClient(cluster_cfg, password, warn=warn)
    try:
        client.login()
        client.discover_nodes()
        yield client
    finally:
        client.logout()
        client.close()


class HyperCoreClient:
    """A logged-in conversation with one cluster (thread-safe for independent calls)."""

    def __init__(
        self,
        cluster: ConnectionSettings,
        password: Secret,
        *,
        warn: Callable[[str], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cluster = cluster
        self._password = password
        self._sleep = sleep
        self._clock = clock
        # Set by the engine when a run stops: the waits for what would only be cleaned
        # up (a snapshot task, a label) end at once instead of keeping the exit waiting.
        self.cancel: threading.Event | None = None
        self.pool = NodePool(
            cluster.name,
            list(cluster.nodes),
            cluster.tls,
            connect_timeout=cluster.connect_timeout,
            read_timeout=cluster.read_timeout,
            rounds=cluster.retries,
            sleep=sleep,
            clock=clock,
        )
        self.pool.relogin = self.login
        if getattr(cluster.tls, "insecure", False):
            message = (
                f"TLS certificates of cluster {cluster.name} are NOT verified (insecure: true); "
                "pin them with `hcbak cluster add --trust-on-first-use` or --fingerprint"
            )
            (warn or log.warning)(message)

    # --- session ----------------------------------------------------------------------
    def login(self) -> None:
        """`POST /login` -> sessionID, sent as a cookie on every later call."""
        body = {
            "username": self.cluster.username,
            "password": self._password.reveal(),
            "useOIDC": False,
        }
        # Logging in twice only creates a second session: safe to repeat on any node.
        resp = self.pool.send("POST", "/login", json=body, idempotent=True, auth=False)
        if resp.status_code in (401, 403):
            raise AuthError(
                f"cluster {self.cluster.name} refused the login of user "
                f"{self.cluster.username!r} (HTTP {resp.status_code})",
                hint="check the username and the password reference in the config",
            )
        data = _json(resp, "POST /login")
        session_id = data.get("sessionID") if isinstance(data, dict) else None
        session_id = session_id or resp.cookies.get("sessionID")
        if not session_id:
            raise APIError("login answered without a sessionID", status=resp.status_code)
        self.pool.session_cookie = str(session_id)

    def logout(self) -> None:
        """Best effort: a failed logout must not hide the run's real outcome."""
        if not self.pool.session_cookie:
            return
        try:
            self.pool.send(
                "POST", "/logout", idempotent=True, rounds=LOGOUT_TIMEOUT_ROUNDS, json={}
            )
        except ClusterError as exc:
            log.debug("logout failed: %s", exc)
        finally:
            self.pool.session_cookie = None

    def close(self) -> None:
        self.pool.close()

    def discover_nodes(self) -> list[str]:
        """Add `Node.lanIP`s not yet configured to the rotation (failover.add_discovered)."""
        try:
            nodes = self.nodes()
        except (APIError, AuthError) as exc:
            log.debug("node discovery skipped: %s", exc)
            return []
        return self.pool.add_discovered([n.lan_ip for n in nodes])

    # --- plumbing ---------------------------------------------------------------------
    def _call(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool,
        json: Any = None,
        missing_ok: bool = False,
    ) -> Any:
        """Send, check the status before parsing, return the JSON (None: 404 allowed)."""
        resp = self.pool.send(method, path, json=json, idempotent=idempotent)
        if resp.status_code == 404 and missing_ok:
            return None
        _check_status(resp, f"{method} {path}", self.cluster.username)
        return _json(resp, f"{method} {path}")

    def _get_list(self, path: str, *, missing_ok: bool = False) -> list[dict[str, Any]]:
        """GETs return arrays, even by uuid (API notes).

        A missing object comes back either as `[]` with 200 (what the vendor's
        integration tests assert for a deleted VM) or as 404 with an `{"error"}` body:
        with `missing_ok` both mean "no records". An object body is never read as a
        record: it is an error message (or no record shape at all).
        """
        data = self._call("GET", path, idempotent=True, missing_ok=missing_ok)
        if data is None:
            return []
        if isinstance(data, dict):
            detail = data.get("error") or "an object"
            raise APIError(f"GET {path} answered {str(detail)[:200]}, not a list of records")
        if not isinstance(data, list):
            raise APIError(f"GET {path} answered {type(data).__name__}, not a list")
        return [x for x in data if isinstance(x, dict)]

    def _mutate(
        self,
        method: str,
        path: str,
        body: Any,
        *,
        what: str,
        accepted: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """A mutation + its task wait; returns the `{taskTag, createdUUID}` answer.

        `accepted` sees that answer before the wait: what the task will create is known
        from then on, and a caller that dies during the wait must have recorded it.
        """
        data = self._call(method, path, json=body, idempotent=False)
        result = data if isinstance(data, dict) else {}
        if accepted is not None:
            accepted(result)
        self.wait_task(result.get("taskTag"), what=what)
        return result

    def records(self, path: str) -> list[dict[str, Any]]:
        """The raw records of a GET (a missing object: `[]`), for shape reports only:
        everything else reads typed records."""
        return self._get_list(path, missing_ok=True)

    def wait_task(self, tag: Any, *, what: str = "task", cancellable: bool = False) -> Task | None:
        """Wait for a task tag (str or int; empty = nothing), bounded by task_timeout.

        Once `cancel` is set, polls every STOPPING_POLL at most; `cancellable`:
        Interrupted at once instead (the caller journaled the task)."""
        cancel = self.cancel

        def pause(seconds: float) -> None:
            if cancel is None:
                self._sleep(seconds)
            elif cancel.is_set():  # a stopping run's cleanup: its exit waits for this
                self._sleep(min(seconds, STOPPING_POLL))
            else:
                cancel.wait(seconds)  # wakes up when the run is stopped

        return tasks.wait_for_task(
            lambda t: self._get_list(f"/TaskTag/{quote(t)}", missing_ok=True),
            tag,
            self.cluster.task_timeout,
            what=what,
            sleep=pause,
            clock=self._clock,
            stopped=cancel.is_set if cancel is not None and cancellable else None,
        )

    # --- cluster ----------------------------------------------------------------------
    def cluster_info(self) -> ClusterInfo:
        items = self._get_list("/Cluster")
        if not items:
            raise APIError("GET /Cluster answered an empty list")
        return ClusterInfo.from_api(items[0])

    def nodes(self) -> list[Node]:
        return [Node.from_api(x) for x in self._get_list("/Node")]

    def roles(self) -> list[str]:
        """Role names of the logged-in account (GET /User + /Role)."""
        users = self._get_list("/User")
        roles = self._get_list("/Role")
        from hcbak.hypercore.roles import role_names_from_api  # `cluster test` only

        return role_names_from_api(self.cluster.username, users, roles)

    def update_status(self) -> UpdateStatus:
        """Fail closed: any doubt (404, 5xx, timeout, odd JSON) means "not idle"."""
        try:
            resp = self.pool.send(
                "GET", "/update/update_status.json", idempotent=True, rest=False, auth=False
            )
        except ClusterError as exc:
            return UpdateStatus(False, f"update status unknown ({exc})")
        if resp.status_code == 404 and NEVER_UPDATED_IS_IDLE:
            return UpdateStatus(True, "idle (never updated: no update_status.json)")
        if resp.status_code != 200:
            return UpdateStatus(False, f"update status unknown (HTTP {resp.status_code})")
        try:
            data = resp.json()
        except ValueError:
            return UpdateStatus(False, "update status unknown (not JSON)")
        return UpdateStatus.from_api(data)

    def wait_for_update(
        self,
        max_wait: float | None = None,
        poll: float | None = None,
        *,
        on_wait: Callable[[UpdateStatus, float], None] | None = None,
    ) -> UpdateStatus:
        """Return once the cluster is idle: no snapshot may start while it updates.

        Waits at most `max_wait` seconds (default: the cluster's update_wait), asking
        every `poll` seconds (default: a twentieth of that, 0.2 to 30 s), then raises
        ClusterBusyError. `on_wait(status, waited)` hears of every wait. Once `cancel`
        is set (the run is stopping) it returns the last status at once.
        """
        limit = float(self.cluster.update_wait if max_wait is None else max_wait)
        poll = min(30.0, max(0.2, limit / 20)) if poll is None else poll
        started = self._clock()
        while True:
            status = self.update_status()
            if status.idle:
                return status
            waited = self._clock() - started
            if waited >= limit:
                raise ClusterBusyError(
                    f"skipped: cluster {self.cluster.name} is updating ({status.detail}); "
                    f"waited {waited:.0f} s",
                    hint="the next run tries again; raise update_wait to wait longer",
                )
            if on_wait:
                on_wait(status, waited)
            pause = max(0.0, min(poll, limit - waited))
            if self.cancel is None:
                self._sleep(pause)
            elif self.cancel.wait(pause):
                return status

    # --- VMs --------------------------------------------------------------------------
    def list_vms(self) -> list[VM]:
        return [VM.from_api(x) for x in self._get_list("/VirDomain")]

    def get_vm(self, uuid: str) -> VM:
        items = self._get_list(f"/VirDomain/{quote(uuid)}", missing_ok=True)
        if not items:
            raise NotFoundError(f"VM {uuid} does not exist on cluster {self.cluster.name}")
        return VM.from_api(items[0])

    def find_vm(self, name_or_uuid: str) -> VM:
        """By uuid, else by exact name; an ambiguous name is a usage error."""
        vms = self.list_vms()
        for vm in vms:
            if vm.uuid == name_or_uuid:
                return vm
        named = [vm for vm in vms if vm.name == name_or_uuid]
        if len(named) > 1:
            raise UsageError(
                f"{len(named)} VMs on cluster {self.cluster.name} are named {name_or_uuid!r}",
                hint="use the VM uuid",
            )
        if not named:
            raise NotFoundError(f"no VM {name_or_uuid!r} on cluster {self.cluster.name}")
        return named[0]

    def create_vm(self, definition: dict[str, Any]) -> str:
        """Create a VM from a `dom` definition (disks are attached later)."""
        dom = dict(definition)
        dom.setdefault("blockDevs", [])
        result = self._mutate(
            "POST", "/VirDomain", {"dom": dom, "options": {}}, what=f"create VM {dom.get('name')}"
        )
        return _created(result, "POST /VirDomain")

    def vm_action(self, uuid: str, action: str) -> None:
        """START, SHUTDOWN, STOP, REBOOT."""
        body = [{"virDomainUUID": uuid, "actionType": action}]
        self._mutate("POST", "/VirDomain/action", body, what=f"{action} VM {uuid}")

    def wait_powered_off(self, uuid: str, timeout: float) -> bool:
        """Whether the VM is off within `timeout` seconds (after SHUTDOWN or STOP)."""
        off = tasks.poll_until(
            lambda: self.get_vm(uuid).is_off or None,
            timeout,
            first=0.05,
            sleep=self._sleep,
            clock=self._clock,
        )
        return bool(off)

    def update_vm(self, uuid: str, fields: dict[str, Any]) -> None:
        self._mutate("PATCH", f"/VirDomain/{quote(uuid)}", fields, what=f"update VM {uuid}")

    def delete_vm(self, uuid: str) -> None:
        self._delete(f"/VirDomain/{quote(uuid)}", what=f"delete VM {uuid}")

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
        `replication: false` always: the API default true would ship the snapshot to
        the replication target. `accepted(task tag)` runs once the cluster took the
        request, before the task (and so the snapshot) is done; once the run is being
        stopped (`cancel`) that task is journaled and not waited for.

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
        body: dict[str, Any] = {
            "domainUUID": vm_uuid,
            "label": label,
            "type": "USER",
            "replication": False,
        }
        if quiesce:
            body["attemptQuiesce"] = True
        last: MaybeProcessedError | None = None
        refusals, started = 0, self._clock()
        for attempt in range(self.pool.rounds):
            if attempt:
                self._pause(backoff_delay(attempt))
                found = self.find_snapshot(vm_uuid, label)  # never a second one
                if found:
                    return found
            try:
                if quiesce:
                    resp = self.pool.send(
                        "POST", QUIESCE_SNAPSHOT_PATH, json=body, idempotent=False, rest=False
                    )
                    what = f"POST {QUIESCE_SNAPSHOT_PATH} (attemptQuiesce)"
                    try:
                        _check_status(resp, what, self.cluster.username)
                    except APIError as exc:
                        if exc.status in QUIESCE_REFUSED_STATUS:
                            raise QuiesceRefusedError(exc.message, status=exc.status) from None
                        raise
                    data = _json(resp, what)
                else:
                    data = self._call("POST", "/VirDomainSnapshot", json=body, idempotent=False)
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
        found = self.find_snapshot(vm_uuid, label)
        if found:
            return found
        assert last is not None
        if refusals == self.pool.rounds:
            raise APIError(
                f"snapshot of VM {vm_uuid} refused: the cluster answered HTTP 500 to "
                f"{refusals} request(s) in {self._clock() - started:.1f} s",
                status=VM_BUSY_STATUS,
                hint="the VM is busy with another task (another job's snapshot, a "
                "restore); the job's retries try again",
            )
        raise last

    def _pause(self, seconds: float) -> None:
        """Sleep, or less when the run is being stopped."""
        if self.cancel is None:
            self._sleep(seconds)
        elif self.cancel.wait(seconds):
            raise Interrupted("interrupted while waiting to ask for a snapshot again")

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
        _check_status(resp, f"POST {path}", self.cluster.username)
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
                accepted(_created(result, f"POST {path}"), str(result.get("taskTag") or ""))

        what = f"clone of disk {disk_uuid}"
        result = self._mutate("POST", path, body, what=what, accepted=created)
        return _created(result, f"POST {path}")

    def delete_block_device(self, uuid: str) -> None:
        self._delete(f"/VirDomainBlockDevice/{quote(uuid)}", what=f"delete block device {uuid}")

    # --- virtual disks (restore) ------------------------------------------------------
    def upload_virtual_disk(self, name: str, size: int, chunks: Iterable[bytes]) -> str:
        """Stream exactly `size` bytes as a new virtual disk; returns its uuid.

        `name` carries the format extension (.qcow2, .img, ...). The body is streamed
        with an exact Content-Length (the API rejects chunked encoding) and no temp file.
        """
        if not name.lower().endswith(UPLOAD_FORMATS):
            raise UsageError(f"upload name {name!r} lacks a format extension {UPLOAD_FORMATS}")
        body = SizedStream(chunks, size)
        resp = self.pool.send(
            "PUT",
            "/VirtualDisk/upload",
            params={"filename": name, "filesize": str(size)},
            data=body,
            headers={"Content-Type": "application/octet-stream"},
            idempotent=False,
        )
        _check_status(resp, "PUT /VirtualDisk/upload", self.cluster.username)
        data = _json(resp, "PUT /VirtualDisk/upload")
        result = data if isinstance(data, dict) else {}
        self.wait_task(result.get("taskTag"), what=f"upload of {name}")
        uuid = _created(result, "PUT /VirtualDisk/upload")
        self._await_final_name(uuid)
        return uuid

    def _await_final_name(self, uuid: str) -> VirtualDisk:
        """Uploads are renamed uploading-<n> -> converting-<n> -> <n>; wait for <n>."""
        last: list[VirtualDisk] = []

        def final() -> VirtualDisk | None:
            last[:] = [self.get_virtual_disk(uuid)]
            return last[0] if last[0].is_final else None

        timeout = self.cluster.task_timeout
        found = tasks.poll_until(final, timeout, sleep=self._sleep, clock=self._clock)
        if found is None:
            raise TransportError(
                f"virtual disk {uuid} still named {last[0].name!r} after {timeout:g} s"
            )
        return found

    def list_virtual_disks(self) -> list[VirtualDisk]:
        return [VirtualDisk.from_api(x) for x in self._get_list("/VirtualDisk")]

    def get_virtual_disk(self, uuid: str) -> VirtualDisk:
        items = self._get_list(f"/VirtualDisk/{quote(uuid)}", missing_ok=True)
        if not items:
            raise NotFoundError(f"virtual disk {uuid} does not exist")
        return VirtualDisk.from_api(items[0])

    def attach_virtual_disk(
        self, vd_uuid: str, vm_uuid: str, type: str, capacity: int, slot: int
    ) -> str:
        """Attach an uploaded disk to a VM; returns the new block device uuid."""
        body = {
            # regenerateDiskID defaults to true and breaks booting (GRUB/BCD disk ids).
            "options": {"regenerateDiskID": False, "readOnly": False},
            "template": {
                "virDomainUUID": vm_uuid,
                "type": type,
                "capacity": int(capacity),
                "slot": int(slot),
            },
        }
        path = f"/VirtualDisk/{quote(vd_uuid)}/attach"
        result = self._mutate("POST", path, body, what=f"attach of virtual disk {vd_uuid}")
        return _created(result, f"POST {path}")

    def delete_virtual_disk(self, uuid: str) -> None:
        self._delete(f"/VirtualDisk/{quote(uuid)}", what=f"delete virtual disk {uuid}")

    # --- deletes ----------------------------------------------------------------------
    def _delete(self, path: str, *, what: str) -> None:
        """DELETE + wait. Deleting what is already gone is not an error, which also
        makes a DELETE whose response was lost safe to repeat (404 the second time)."""
        for attempt in range(2):
            try:
                data = self._call("DELETE", path, idempotent=False, missing_ok=True)
            except MaybeProcessedError:
                if attempt:
                    raise
                self._sleep(backoff_delay(1))
                continue
            if data is None:
                return
            result = data if isinstance(data, dict) else {}
            self.wait_task(result.get("taskTag"), what=what)
            return


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


class SizedStream:
    """An iterable request body with a known length.

    requests sends an iterable with `__len__` with that Content-Length and no chunked
    encoding. The byte count is checked while streaming: a producer that yields more
    or fewer bytes than announced is a bug, reported instead of sending a corrupt disk.
    """

    def __init__(self, chunks: Iterable[bytes], size: int) -> None:
        self._chunks = chunks
        self.size = int(size)
        self.sent = 0
        self.started = False

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[bytes]:
        if self.started:
            raise TransportError("upload body can only be streamed once")
        self.started = True
        for chunk in self._chunks:
            if not chunk:
                continue
            self.sent += len(chunk)
            if self.sent > self.size:
                raise TransportError(
                    f"upload producer yielded more than the announced {self.size} bytes"
                )
            yield bytes(chunk)
        if self.sent != self.size:
            raise TransportError(
                f"upload producer yielded {self.sent} bytes, announced {self.size}"
            )


def _created(result: dict[str, Any], what: str) -> str:
    uuid = result.get("createdUUID")
    if not uuid:
        raise APIError(f"{what} answered without createdUUID")
    return str(uuid)


def _check_status(resp: Any, what: str, username: str) -> None:
    code = resp.status_code
    if code < 400:
        return
    text = (
        " ".join(resp.text.split())[:200]
        if "html" not in resp.headers.get("Content-Type", "")
        else "(HTML page)"
    )
    if code == 401:
        raise AuthError(f"{what}: the cluster rejected the session of user {username!r}")
    if code == 403:
        raise AuthError(
            f"{what}: user {username!r} lacks the role for this call (HTTP 403)",
            hint="see `hcbak cluster test` for the roles backup and restore need",
        )
    raise APIError(f"{what} failed: HTTP {code} {text}".rstrip(), status=code)


def _json(resp: Any, what: str) -> Any:
    if not resp.content:
        return None
    try:
        return resp.json()
    except ValueError:
        raise APIError(
            f"{what} answered HTTP {resp.status_code} with a body that is not JSON",
            status=resp.status_code,
        )
