"""Guest quiescence (`quiesce: true`): real `hcbak` runs against the simulator.

The simulator serves the v2 snapshot call with `attemptQuiesce` from cluster version
9.7.1 and quiesces only VMs whose guest agent answers; these tests read what hcbak
sent from its request log and what it recorded from the point and the run report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import RunHcbak, assert_no_traceback

from hcbak.engine.connect import connection_settings
from hcbak.errors import QuiesceRefusedError
from hcbak.hypercore.client import hypercore_session
from hcbak.hypercore.quiesce import plan_quiesce

from .helpers import Lab, MiB, lab, report_vm
from .test_cli import _schema, _validate

SUPPORTED = "9.7.1.219000"
OLD = "9.4.30.217736"


def _snapshot_posts(L: Lab) -> list[tuple[str, dict[str, Any]]]:
    return [
        (path, body)
        for _node, method, path, body in list(L.sim.requests)
        if method == "POST" and path.rstrip("/").endswith("/VirDomainSnapshot")
    ]


def _run(L: Lab, run_hcbak: RunHcbak) -> dict[str, Any]:
    proc = run_hcbak("job", "run", "nightly", "--json", env=L.env)
    assert_no_traceback(proc)
    report = json.loads(proc.stdout)
    _validate(report, _schema())
    report["_exit"] = proc.returncode
    return report


def _point(L: Lab, run_hcbak: RunHcbak, point_id: str) -> dict[str, Any]:
    proc = run_hcbak("points", "show", point_id, "--json", env=L.env, check=True)
    return json.loads(proc.stdout)


def test_supported_cluster_quiesces_a_vm_with_guest_tools_and_warns_for_one_without(
    tmp_path: Path, run_hcbak: RunHcbak
) -> None:
    with lab(tmp_path) as L:
        L.sim.set_cluster_version(SUPPORTED)
        app = L.sim.create_vm("app01", [1 * MiB], tags=["nightly"], guest_tools=True)
        plain = L.sim.create_vm("plain01", [1 * MiB], tags=["nightly"])
        run_hcbak("job", "edit", "nightly", "--quiesce", env=L.env, check=True)
        shown = run_hcbak("job", "show", "nightly", "--json", env=L.env, check=True)
        assert json.loads(shown.stdout)["quiesce"] is True

        report = _run(L, run_hcbak)
        assert report["_exit"] == 1  # one VM's warning
        quiesced, crash = report_vm(report, "app01"), report_vm(report, "plain01")
        assert (quiesced["status"], quiesced["consistency"], quiesced["warnings"]) == (
            "ok",
            "application",
            [],
        )
        assert (crash["status"], crash["consistency"]) == ("ok", "crash")
        (warning,) = crash["warnings"]
        assert "crash-consistent" in warning and "guestAgentState UNAVAILABLE" in warning

        # What went over the wire: v2 + attemptQuiesce for app01 only.
        posts = {body["domainUUID"]: (path, body) for path, body in _snapshot_posts(L)}
        assert posts[app][0] == "/rest/v2/VirDomainSnapshot"
        assert posts[app][1]["attemptQuiesce"] is True and posts[app][1]["replication"] is False
        assert posts[plain][0] == "/rest/v1/VirDomainSnapshot"
        assert "attemptQuiesce" not in posts[plain][1]
        assert L.sim.snapshot_quiesced(quiesced["snapshot_uuid"])
        assert not L.sim.snapshot_quiesced(crash["snapshot_uuid"])

        # The points record what they got, in `points show` and `points list`.
        assert _point(L, run_hcbak, quiesced["point_id"])["consistency"] == "application"
        assert _point(L, run_hcbak, crash["point_id"])["consistency"] == "crash"
        listed = run_hcbak("points", "list", "--json", env=L.env, check=True)
        by_vm = {p["vm"]: p["consistency"] for p in json.loads(listed.stdout)["points"]}
        assert by_vm == {"app01": "application", "plain01": "crash"}


def test_old_cluster_version_falls_back_to_crash_consistent_with_a_warning(
    tmp_path: Path, run_hcbak: RunHcbak
) -> None:
    with lab(tmp_path, quiesce=True) as L:
        L.sim.create_vm("app01", [1 * MiB], tags=["nightly"], guest_tools=True)
        report = _run(L, run_hcbak)
        assert report["_exit"] == 1
        vm = report_vm(report, "app01")
        assert (vm["status"], vm["consistency"]) == ("ok", "crash")
        (warning,) = vm["warnings"]
        assert f"cluster version {OLD} cannot quiesce" in warning
        assert [path for path, _ in _snapshot_posts(L)] == ["/rest/v1/VirDomainSnapshot"]
        assert "attemptQuiesce" not in _snapshot_posts(L)[0][1]
        assert _point(L, run_hcbak, vm["point_id"])["consistency"] == "crash"


def test_a_cluster_that_refuses_the_quiesced_request_gets_a_crash_consistent_snapshot(
    tmp_path: Path, run_hcbak: RunHcbak
) -> None:
    with lab(tmp_path, quiesce=True) as L:
        L.sim.set_cluster_version(SUPPORTED)
        vm_uuid = L.sim.create_vm("app01", [1 * MiB], tags=["nightly"], guest_tools=True)
        L.sim.faults.refuse_quiesce()
        report = _run(L, run_hcbak)
        assert report["_exit"] == 1
        vm = report_vm(report, "app01")
        assert (vm["status"], vm["consistency"]) == ("ok", "crash")
        (warning,) = vm["warnings"]
        assert "refused the quiesced snapshot request" in warning and "HTTP 400" in warning
        # The refused v2 request started nothing; one v1 request made the one snapshot.
        paths = [path for path, _ in _snapshot_posts(L)]
        assert paths == ["/rest/v2/VirDomainSnapshot", "/rest/v1/VirDomainSnapshot"]
        assert len(L.hcbak_snapshots(vm_uuid)) == 1
        assert not L.sim.snapshot_quiesced(vm["snapshot_uuid"])


def test_no_quiesce_field_is_sent_when_the_job_does_not_ask(
    tmp_path: Path, run_hcbak: RunHcbak
) -> None:
    with lab(tmp_path) as L:
        L.sim.set_cluster_version(SUPPORTED)
        L.sim.create_vm("app01", [1 * MiB], tags=["nightly"], guest_tools=True)
        report = _run(L, run_hcbak)
        assert report["_exit"] == 0
        vm = report_vm(report, "app01")
        assert (vm["consistency"], vm["warnings"]) == ("crash", [])
        posts = _snapshot_posts(L)
        assert [path for path, _ in posts] == ["/rest/v1/VirDomainSnapshot"]
        assert all("attemptQuiesce" not in body for _, body in posts)
        # `--no-quiesce` turns it off again after `--quiesce` (and the YAML drops the key).
        run_hcbak("job", "edit", "nightly", "--quiesce", env=L.env, check=True)
        run_hcbak("job", "edit", "nightly", "--no-quiesce", env=L.env, check=True)
        saved = yaml.safe_load(L.config.path.read_text(encoding="utf-8"))
        assert "quiesce" not in saved["jobs"]["nightly"]


def test_client_reads_the_guest_agent_and_an_old_cluster_refuses_the_v2_request(
    tmp_path: Path,
) -> None:
    """In-process: the client's part (an old cluster's /rest/v2 is an HTML 404)."""
    with lab(tmp_path) as L, hypercore_session(connection_settings(L.config.cluster("lab"))) as hc:
        vm = L.sim.create_vm("app01", [1 * MiB], guest_tools=True)
        off = L.sim.create_vm("off01", [1 * MiB], guest_tools=True, state="SHUTOFF")
        assert hc.get_vm(vm).guest_agent_state == "AVAILABLE"
        assert hc.get_vm(off).guest_agent_state == "UNAVAILABLE"  # no agent while off
        with pytest.raises(QuiesceRefusedError) as refused:
            hc.create_snapshot(vm, "old-cluster", quiesce=True)
        assert refused.value.status == 404 and L.sim.snapshots(vm) == []
        assert [p for _n, m, p, _b in L.sim.requests if "/rest/v2/" in p] == [
            "/rest/v2/VirDomainSnapshot"
        ]
        L.sim.set_cluster_version(SUPPORTED)
        assert hc.cluster_info().version == SUPPORTED
        snap = hc.create_snapshot(vm, "new-cluster", quiesce=True)
        assert L.sim.snapshot_quiesced(snap.uuid)
        # An attempt on a VM without an answering agent is taken, crash-consistent.
        assert not L.sim.snapshot_quiesced(hc.create_snapshot(off, "off", quiesce=True).uuid)


def test_the_plan_attempts_only_when_asked_supported_and_the_agent_answers() -> None:
    """The pure decision, over the cases the CLI tests do not each run."""
    assert plan_quiesce(False, SUPPORTED, "AVAILABLE").attempt is False
    assert plan_quiesce(False, OLD, "").warning == ""  # not asked: nothing to say
    assert plan_quiesce(True, SUPPORTED, "AVAILABLE").consistency == "application"
    assert plan_quiesce(True, "9.7.0.1", "AVAILABLE").attempt is False
    assert plan_quiesce(True, "10.0.0", "AVAILABLE").attempt is True
    unknown = plan_quiesce(True, "", "AVAILABLE")
    assert not unknown.attempt and "cluster version unknown" in unknown.warning
    missing = plan_quiesce(True, SUPPORTED, "")
    assert not missing.attempt and "guestAgentState not reported" in missing.warning
