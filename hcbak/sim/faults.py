"""Fault injection: what a real cluster does to a client on a bad day.

Every switch is a plain attribute read by the server on each connection/request, so
tests flip them at runtime (Python API, or POST /sim/fault with the admin token).
Node-level faults are applied by the node servers through the `on_node_change` hook.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass

NODE_MODES = ("ok", "down", "hang", "tls_error", "tls_cert", "502")


@dataclass
class FailRule:
    """`fail_next`: the next `remaining` calls matching method/path prefix get a 500."""

    remaining: int
    method: str
    path_prefix: str

    def matches(self, method: str, path: str) -> bool:
        if self.method not in ("*", method.upper()):
            return False
        prefix = self.path_prefix
        return path.startswith(prefix) or path.startswith("/rest/v1" + prefix)


@dataclass(frozen=True)
class SlowAnswer:
    """`slow_answer`: matching calls are answered `seconds` late."""

    method: str
    path_suffix: str
    seconds: float


class Faults:
    """Runtime fault switches of one simulator (thread safe)."""

    def __init__(self, nodes: int, on_node_change: Callable[[int, str], None]) -> None:
        self._lock = threading.Lock()
        self._on_node_change = on_node_change
        self.node_modes: list[str] = ["ok"] * nodes
        self.rate = 0.0
        self._rng = random.Random(0)
        self._rules: list[FailRule] = []
        self.task_delay_override: float | None = None
        self.failing_task_kind: str | None = None
        self.failing_snapshot_vms: set[str] = set()
        self.sessions_expired = False
        self.update_phase: str | None = None
        self.no_space = False
        self.upload_fail_after: int | None = None
        # Observation point for tests: REST calls answered 500 by error_rate/fail_next.
        self.injected_500s = 0
        self.missing_as_404 = False
        self.quiesce_refused = False
        self.snapshot_by_uuid_gone = False
        self._slow_answers: list[SlowAnswer] = []

    # --- nodes ----------------------------------------------------------------------
    def _set_node(self, i: int, mode: str) -> None:
        if not 0 <= i < len(self.node_modes):
            raise IndexError(f"no node {i}")
        self.node_modes[i] = mode
        self._on_node_change(i, mode)

    def node_down(self, i: int) -> None:
        """Connection refused: the node's listening socket is closed."""
        self._set_node(i, "down")

    def node_hang(self, i: int) -> None:
        """TCP accepted, then nothing: no TLS handshake, no answer (until node_ok/stop)."""
        self._set_node(i, "hang")

    def node_tls_error(self, i: int, mode: str = "handshake") -> None:
        """TLS fails: "handshake" closes the connection mid-handshake; "cert" presents a
        different self-signed certificate (fingerprint/CA mismatch)."""
        self._set_node(i, "tls_cert" if mode == "cert" else "tls_error")

    def node_502(self, i: int) -> None:
        """Every request answered with 502 and an HTML body (backend restarting)."""
        self._set_node(i, "502")

    def node_ok(self, i: int) -> None:
        self._set_node(i, "ok")

    # --- requests -------------------------------------------------------------------
    def error_rate(self, rate: float, seed: int = 0) -> None:
        """Random 500s on that fraction of REST calls (login and ping included)."""
        with self._lock:
            self.rate = rate
            self._rng = random.Random(seed)

    def fail_next(self, n: int, method: str = "*", path_prefix: str = "") -> None:
        """The next n calls matching method ("*" = any) and path prefix get a 500.
        The prefix may be given with or without "/rest/v1"."""
        with self._lock:
            self._rules.append(FailRule(n, method.upper(), path_prefix))

    def should_fail(self, method: str, path: str) -> bool:
        with self._lock:
            for rule in self._rules:
                if rule.remaining > 0 and rule.matches(method, path):
                    rule.remaining -= 1
                    self.injected_500s += 1
                    return True
            self._rules = [r for r in self._rules if r.remaining > 0]
            fail = self.rate > 0 and self._rng.random() < self.rate
            self.injected_500s += fail
            return fail

    def slow_answer(self, seconds: float, method: str = "*", path_suffix: str = "") -> None:
        """Calls matching method and path suffix are carried out at once, but answered
        only `seconds` later: a client that dies meanwhile never learns what it made."""
        with self._lock:
            self._slow_answers.append(SlowAnswer(method.upper(), path_suffix, seconds))

    def answer_delay(self, method: str, path: str) -> float:
        with self._lock:
            for slow in self._slow_answers:
                if slow.method in ("*", method.upper()) and path.endswith(slow.path_suffix):
                    return slow.seconds
        return 0.0

    def expire_sessions(self) -> None:
        """Every existing session is dropped; the next call using one gets 401."""
        with self._lock:
            self.sessions_expired = True

    # --- tasks and cluster ------------------------------------------------------------
    def task_delay(self, seconds: float) -> None:
        """Time a task takes from QUEUED to COMPLETE (slow tasks)."""
        self.task_delay_override = seconds

    def fail_tasks(self, kind: str | None) -> None:
        """Tasks of this kind end in ERROR: "snapshot", "clone", "delete", "upload",
        "attach", "create", "action", "update", or "*" for all; None to stop."""
        self.failing_task_kind = kind

    def fail_snapshot(self, vm_uuid: str, enabled: bool = True) -> None:
        """Snapshot creation for this VM ends in a task ERROR."""
        if enabled:
            self.failing_snapshot_vms.add(vm_uuid)
        else:
            self.failing_snapshot_vms.discard(vm_uuid)

    def refuse_quiesce(self, enabled: bool = True) -> None:
        """The v2 snapshot call answers 400 to `attemptQuiesce`, as a build that
        reports 9.7.1+ but lacks the field would (nothing is started)."""
        self.quiesce_refused = enabled

    def update(self, phase: str | None) -> None:
        """update_status.json: None = never updated (404 HTML); "preparing",
        "running", "complete" (idle), "error", "malformed" (fields missing)."""
        self.update_phase = phase

    def out_of_space(self, enabled: bool = True) -> None:
        """Creates, clones, snapshots and uploads fail as on a full cluster."""
        self.no_space = enabled

    def fail_upload_after(self, nbytes: int | None) -> None:
        """Drop the connection of the next upload after nbytes of body (None = off)."""
        self.upload_fail_after = nbytes

    def missing_404(self, enabled: bool = True) -> None:
        """GET of a missing uuid answers 404 {"error"} instead of 200 `[]`."""
        self.missing_as_404 = enabled

    def no_snapshot_by_uuid(self, enabled: bool = True) -> None:
        """GET /VirDomainSnapshot/{uuid} answers `[]` for every snapshot, as a build
        without that call might (the list still has them)."""
        self.snapshot_by_uuid_gone = enabled

    def task_fails(self, kind: str) -> bool:
        return self.failing_task_kind in ("*", kind)

    def clear(self) -> None:
        """Back to a healthy cluster (nodes included)."""
        with self._lock:
            self.rate = 0.0
            self._rules = []
            self._slow_answers = []
        self.task_delay_override = None
        self.failing_task_kind = None
        self.failing_snapshot_vms = set()
        self.sessions_expired = False
        self.no_space = False
        self.update_phase = None
        self.upload_fail_after = None
        self.missing_as_404 = False
        self.quiesce_refused = False
        self.snapshot_by_uuid_gone = False
        for i, mode in enumerate(self.node_modes):
            if mode != "ok":
                self.node_ok(i)
