"""`HyperCoreClient`: the operations hcbak needs of a cluster, in one object.

The class is assembled from parts, each a module of its own:
- session.py: login/logout, the request plumbing over `NodePool`, task waits, deletes;
- snapshots.py: snapshots, snapshot diffs, clones of snapshot disks;
- virtual_disks.py: uploads and attaches (restore);
- here: the cluster (info, nodes, roles, update status) and its VMs.
Responses are turned into records (records.py) in these modules and nowhere else.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from hcbak.errors import (
    APIError,
    AuthError,
    ClusterBusyError,
    ClusterError,
    NotFoundError,
    UsageError,
)
from hcbak.hypercore import tasks
from hcbak.hypercore.records import VM, ClusterInfo, Node, UpdateStatus
from hcbak.hypercore.replies import created_uuid
from hcbak.hypercore.snapshots import SnapshotCalls
from hcbak.hypercore.virtual_disks import SizedStream, VirtualDiskCalls

if TYPE_CHECKING:
    from hcbak.hypercore.settings import ConnectionSettings

__all__ = ["HyperCoreClient", "SizedStream", "hypercore_session"]

log = logging.getLogger("hcbak.hypercore")

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


class HyperCoreClient(SnapshotCalls, VirtualDiskCalls):
    """A logged-in conversation with one cluster (thread-safe for independent calls)."""

    def discover_nodes(self) -> list[str]:
        """Add `Node.lanIP`s not yet configured to the rotation (failover.add_discovered)."""
        try:
            nodes = self.nodes()
        except (APIError, AuthError) as exc:
            log.debug("node discovery skipped: %s", exc)
            return []
        return self.pool.add_discovered([n.lan_ip for n in nodes])

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
        return created_uuid(result, "POST /VirDomain")

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
