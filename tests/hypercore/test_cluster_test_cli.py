"""`hcbak cluster test` as a real subprocess against the simulator."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from harness import RunHcbak, assert_no_traceback

from .conftest import CANARY


def write_config(
    path: Path,
    sim: Any,
    *,
    user: str = "admin",
    pins: dict[str, str] | None = None,
    worker: str = "hcbak-worker",
    nodes: list[str] | None = None,
) -> None:
    nodes = nodes or list(sim.node_addresses)
    pins = (
        pins if pins is not None else dict(zip(sim.node_addresses, sim.fingerprints, strict=True))
    )
    lines = [
        "clusters:",
        "  lab:",
        f"    nodes: [{', '.join(repr(n) for n in nodes)}]",
        f"    username: {user}",
        "    password_env: HCBAK_TEST_PASSWORD",
        "    tls:",
        "      fingerprints:",
        *[f"        '{a}': {fp}" for a, fp in pins.items()],
        f"    worker_vm: {worker}",
        "    timeouts: {connect: 1, read: 1}",
        "    retries: 1",
    ]
    path.write_text("\n".join(lines) + "\n")


def run_test(run_hcbak: RunHcbak, password: str, *args: str) -> Any:
    return run_hcbak(*args, env={"HCBAK_TEST_PASSWORD": password}, timeout=60)


def test_ready_cluster_reports_nodes_roles_worker_and_exits_0(
    sim: Any, tmp_path: Path, run_hcbak: RunHcbak
) -> None:
    sim.create_vm("web01", [4 << 20])
    write_config(tmp_path / "config.yaml", sim)
    proc = run_test(run_hcbak, sim.admin[1], "cluster", "test", "lab", "--json")
    assert_no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ready"] is True and report["login_ok"] is True
    assert [n["address"] for n in report["nodes"]] == sim.node_addresses
    assert all(n["reachable"] and n["version"] and "pinned" in n["tls"] for n in report["nodes"])
    assert report["backup_ok"] and report["restore_ok"] and report["roles"] == ["Admin"]
    assert report["worker_vm_uuid"] == sim.worker_vm_uuid
    assert report["vm_count"] == 2 and report["update_idle"] is True


def test_backup_user_roles_are_listed_and_judged(
    sim: Any, tmp_path: Path, run_hcbak: RunHcbak
) -> None:
    user, password = sim.backup_user
    write_config(tmp_path / "config.yaml", sim, user=user)
    proc = run_test(run_hcbak, password, "cluster", "test", "lab")
    assert proc.returncode == 0, proc.stderr
    assert "Backup" in proc.stdout and "sufficient" in proc.stdout
    assert "ready:" in proc.stdout


def test_tls_mismatch_exits_4_naming_node_and_both_fingerprints(
    sim: Any, tmp_path: Path, run_hcbak: RunHcbak
) -> None:
    pins = dict(zip(sim.node_addresses, sim.fingerprints, strict=True))
    pins[sim.node_addresses[1]] = "ab" * 32
    write_config(tmp_path / "config.yaml", sim, pins=pins)
    proc = run_test(run_hcbak, sim.admin[1], "cluster", "test", "lab")
    assert_no_traceback(proc)
    assert proc.returncode == 4
    assert sim.node_addresses[1] in proc.stderr
    assert "ab" * 32 in proc.stderr and sim.fingerprints[1] in proc.stderr


def test_missing_worker_vm_exits_4_and_says_how_to_set_it(
    sim: Any, tmp_path: Path, run_hcbak: RunHcbak
) -> None:
    write_config(tmp_path / "config.yaml", sim, worker="no-such-vm")
    proc = run_test(run_hcbak, sim.admin[1], "cluster", "test", "lab")
    assert proc.returncode == 4
    assert "--worker-vm" in proc.stderr and "no-such-vm" in proc.stderr


def test_all_nodes_down_exits_4_quickly_with_the_reason(
    sim: Any, tmp_path: Path, run_hcbak: RunHcbak
) -> None:
    for i in range(3):
        sim.faults.node_down(i)
    write_config(tmp_path / "config.yaml", sim)
    started = time.monotonic()
    proc = run_test(run_hcbak, sim.admin[1], "cluster", "test", "lab")
    assert time.monotonic() - started < 15
    assert_no_traceback(proc)
    assert proc.returncode == 4
    assert "login failed" in proc.stderr and "refused" in proc.stderr


def test_password_never_appears_in_debug_output(
    sim: Any, tmp_path: Path, run_hcbak: RunHcbak
) -> None:
    write_config(tmp_path / "config.yaml", sim)
    ok = run_test(run_hcbak, sim.admin[1], "--debug", "cluster", "test", "lab", "--json")
    assert ok.returncode == 0, ok.stderr
    assert "hcbak.hypercore POST /rest/v1/login" in ok.stderr  # every request was logged
    assert sim.admin[1] not in ok.stdout + ok.stderr
    # a refused login with a canary password, under --debug (traceback printed)
    bad = run_test(run_hcbak, CANARY, "--debug", "cluster", "test", "lab")
    assert bad.returncode == 4
    assert "login failed" in bad.stderr
    assert CANARY not in bad.stdout + bad.stderr
