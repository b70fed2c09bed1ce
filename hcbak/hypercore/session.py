"""`ClientSession`: one logged-in conversation with a cluster over `NodePool` (failover.py).

Every request has (connect, read) timeouts, task waits go through `wait_task`, and
mutations are repeated only when they provably did not reach the API or after checking
their effect. The calls on VMs, snapshots and virtual disks build on this class.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from hcbak.errors import APIError, AuthError, ClusterError, Interrupted
from hcbak.hypercore import tasks
from hcbak.hypercore.failover import MaybeProcessedError, NodePool, backoff_delay
from hcbak.hypercore.records import Task
from hcbak.hypercore.replies import check_status, json_body
from hcbak.secrets import Secret

if TYPE_CHECKING:
    from hcbak.hypercore.settings import ConnectionSettings

log = logging.getLogger("hcbak.hypercore")

LOGOUT_TIMEOUT_ROUNDS = 1
# Task poll interval, at most, once the run is being stopped: the clone removals its
# exit waits for end up to 2 s (tasks.MAX_POLL) earlier than they would be noticed.
STOPPING_POLL = 0.1


class ClientSession:
    """A logged-in conversation with one cluster: login, the request plumbing, task
    waits and deletes. The calls on records build on it (snapshots.py,
    virtual_disks.py, client.py); thread-safe for independent calls."""

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
        if cluster.tls.insecure:
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
        data = json_body(resp, "POST /login")
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
        check_status(resp, f"{method} {path}", self.cluster.username)
        return json_body(resp, f"{method} {path}")

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

    def _pause(self, seconds: float) -> None:
        """Sleep, or less when the run is being stopped."""
        if self.cancel is None:
            self._sleep(seconds)
        elif self.cancel.wait(seconds):
            raise Interrupted("interrupted while waiting to ask for a snapshot again")

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
