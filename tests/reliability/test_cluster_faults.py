"""Every fault the simulator can inject, hitting a `hcbak job run` at the moment it takes
its snapshot (or before the run, for an update in progress). Each has a documented
outcome (docs/reliability.md); whatever the outcome, the next healthy run succeeds and
leaves no orphans, every committed point restores bit-exact and the repository verifies.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from engine.helpers import Lab, MiB, lab

from hcbak.sim.faults import Faults

from .helpers import Ledger, cli

pytestmark = pytest.mark.reliability

Inject = Callable[[Faults, int], None]


@dataclass(frozen=True)
class Hit:
    """Where a fault landed: the node that got the snapshot POST, the length of the
    simulator's request log right after the injection, and the run's wall time."""

    node: int
    at: int
    elapsed: float = 0.0


Effect = Callable[[Lab, Hit], None]


def _failed_over(L: Lab, hit: Hit) -> None:
    """Calls after the fault were served by another node (the client otherwise stays
    on the node that answered last, so a healthy run makes none)."""
    served = {node for node, *_ in L.sim.requests[hit.at :]}
    assert served - {hit.node}, f"no call after the fault reached another node: {served}"


def _failed_over_after_a_timeout(L: Lab, hit: Hit) -> None:
    _failed_over(L, hit)
    least = min(L.config.clusters["lab"].connect_timeout, L.config.clusters["lab"].read_timeout)
    assert hit.elapsed >= least, f"the run took {hit.elapsed:.2f} s: no timeout was waited"


def _retried_two_500s(L: Lab, hit: Hit) -> None:
    assert L.sim.faults.injected_500s == 2, L.sim.faults.injected_500s


def _logged_in_again(L: Lab, hit: Hit) -> None:
    logins = [r for r in L.sim.requests[hit.at :] if r[1] == "POST" and r[2].endswith("/login")]
    assert logins, "no login after the sessions expired"


def _finished_while_updating(L: Lab, hit: Hit) -> None:
    """The run went on after the update started, and hcbak reads the cluster as
    updating now (so a run still before its update check would have waited)."""
    from hcbak.engine.connect import connection_settings
    from hcbak.hypercore.client import hypercore_session

    assert L.sim.requests[hit.at :], "the run made no call after the update started"
    with hypercore_session(connection_settings(L.config.clusters["lab"])) as hc:
        status = hc.update_status()
    assert not status.idle, status.detail


# fault -> (how to inject it on the node serving the run, expected exit, words in stderr,
# the fault's visible effect on the run when its exit alone cannot tell)
OUTCOMES: dict[str, tuple[Inject, int, str, Effect | None]] = {
    "node_down": (lambda f, n: f.node_down(n), 0, "", _failed_over),
    "node_hang": (lambda f, n: f.node_hang(n), 0, "", _failed_over_after_a_timeout),
    "node_502": (lambda f, n: f.node_502(n), 0, "", _failed_over),
    "tls_handshake_error": (lambda f, n: f.node_tls_error(n), 0, "", _failed_over),
    "burst_of_500s": (lambda f, n: f.fail_next(2), 0, "", _retried_two_500s),
    "every_call_500": (lambda f, n: f.error_rate(1.0), 4, "answered HTTP 500", None),
    "session_expiry": (lambda f, n: f.expire_sessions(), 0, "", _logged_in_again),
    "task_error_snapshot": (lambda f, n: f.fail_tasks("snapshot"), 4, "state ERROR", None),
    "task_error_clone": (lambda f, n: f.fail_tasks("clone"), 4, "state ERROR", None),
    # The new point is safe; only cleanup failed: a warning, cleaned up by the next run.
    "task_error_delete": (lambda f, n: f.fail_tasks("delete"), 1, "", None),
    "cluster_out_of_space": (lambda f, n: f.out_of_space(), 4, "insufficient space", None),
    # An update that starts mid-run does not stop a run already past its update check.
    "update_starts_mid_run": (lambda f, n: f.update("running"), 0, "", _finished_while_updating),
}


def _inject_at_snapshot(L: Lab, inject: Inject) -> tuple[threading.Thread, list[Hit]]:
    """Watch the simulator's request log; inject on the node that received the
    snapshot POST, the moment it arrives (the run is then mid-flight). The returned
    list receives where it landed."""
    start = len(L.sim.requests)
    hits: list[Hit] = []

    def watch() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for node, method, path, _ in L.sim.requests[start:]:
                if method == "POST" and path.endswith("/VirDomainSnapshot"):
                    inject(L.sim.faults, node)
                    hits.append(Hit(node, len(L.sim.requests)))
                    return
            time.sleep(0.002)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread, hits


def _setup(L: Lab) -> tuple[str, str, Ledger]:
    vm = L.sim.create_vm("web01", [2 * MiB], tags=["nightly"])
    disk = L.sim.disk_uuids(vm)[0]
    L.sim.fill(disk, seed=70)
    ledger = Ledger(L, [disk])
    live = ledger.live_hashes()
    assert cli(L.env, "job", "run", "nightly").code == 0
    ledger.record_new(live)
    L.sim.write(disk, 12345, b"changed by the guest" * 100)
    return vm, disk, ledger


def _healthy_again(L: Lab, vm: str, ledger: Ledger) -> None:
    L.sim.faults.clear()
    L.sim.faults.update(None)  # Faults.clear() leaves update_phase set (see the report)
    live = ledger.live_hashes()
    again = cli(L.env, "job", "run", "nightly")
    again.assert_clean()
    assert again.code == 0, again.err
    ledger.record_new(live)
    assert ledger.check() == len(ledger.expected)
    clones = [
        d
        for d in L.sim.block_devices()
        if d["vm"] == L.sim.worker_vm_uuid and d.get("sourceSnapshotUUID")
    ]
    assert clones == [], "no clone of the failed run is left on the worker"
    assert len(L.hcbak_snapshots(vm)) == 1, "only the newest base snapshot is kept"
    verify = cli(L.env, "repo", "verify", "main", "--read-data")
    assert verify.code == 0, verify.err


@pytest.mark.parametrize("fault", list(OUTCOMES))
def test_cluster_fault_during_a_run_has_its_documented_outcome(tmp_path: Path, fault: str) -> None:
    inject, expected, words, effect = OUTCOMES[fault]
    with lab(tmp_path) as L:
        vm, _disk, ledger = _setup(L)
        live = ledger.live_hashes()
        # Tasks take a moment, as on a real cluster: the simulator decides a task's
        # outcome when it is due, so a fault injected at the snapshot POST must land
        # before that whatever the machine's load (5 ms was a race under CI load).
        L.sim.faults.task_delay(0.25)
        watcher, hits = _inject_at_snapshot(L, inject)
        started = time.monotonic()
        res = cli(L.env, "job", "run", "nightly")
        elapsed = time.monotonic() - started
        watcher.join(timeout=5)
        res.assert_clean()
        assert hits, "the run sent no snapshot POST: the fault was never injected"
        assert res.code == expected, (fault, res.code, res.err)
        assert words in res.err, res.err
        if effect is not None:
            effect(L, replace(hits[0], elapsed=elapsed))
        if expected in (0, 1):
            assert ledger.record_new(live), "a successful run commits a point"
        _healthy_again(L, vm, ledger)


def test_update_in_progress_before_a_run_waits_then_exits_4(tmp_path: Path) -> None:
    with lab(tmp_path) as L:  # the lab's update_wait is 2 s
        vm, _disk, ledger = _setup(L)
        L.sim.faults.update("running")
        started = time.monotonic()
        res = cli(L.env, "job", "run", "nightly")
        res.assert_clean()
        assert res.code == 4, res.err
        assert time.monotonic() - started >= 2.0, "the run waited update_wait first"
        assert "updat" in res.err.lower(), res.err
        assert len(ledger.lab.points()) == 1, "no point was made while the cluster updates"
        _healthy_again(L, vm, ledger)


def test_clearing_faults_also_ends_an_injected_update() -> None:
    faults = Faults(1, lambda _i, _mode: None)
    faults.update("running")
    faults.clear()
    assert faults.update_phase is None


def test_node_with_a_wrong_certificate_is_never_trusted(tmp_path: Path) -> None:
    """A node presenting another certificate may be an attacker: when the node hcbak
    contacts first does so, the run fails closed with exit 4 naming the pin instead of
    skipping to another node. (Injected before the run: mid-run, a kept-alive TLS
    connection would not notice a new certificate.)"""
    with lab(tmp_path) as L:
        vm, _disk, ledger = _setup(L)
        L.sim.faults.node_tls_error(0, "cert")
        res = cli(L.env, "job", "run", "nightly")
        res.assert_clean()
        assert res.code == 4, res.err
        # The reason is in the report on stdout (stderr only logs "job started"; see the
        # report about exit-codes.md's "one error line on stderr" promise).
        assert "does not match the pinned fingerprint" in res.out + res.err, res.out
        assert len(L.points()) == 1, "no point was taken through an untrusted node"
        _healthy_again(L, vm, ledger)
