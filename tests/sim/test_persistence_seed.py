"""State survives a restart; the demo seed builds the documented sample cluster."""

from __future__ import annotations

from pathlib import Path

from hcbak.sim import Simulator
from hcbak.sim.seed import GROUP_TAG, seed_demo

from .helpers import Api

MIB = 1 << 20


def test_restart_keeps_vms_snapshots_disks_credentials_and_certificates(tmp_path: Path) -> None:
    state = tmp_path / "sim"
    with Simulator(state, nodes=2) as sim:
        vm = sim.create_vm("web01", [MIB])
        disk = sim.disk_uuids(vm)[0]
        sim.write(disk, 0, b"one")
        snap = Api(sim).mutate("POST", "/VirDomainSnapshot", {"domainUUID": vm})["createdUUID"]
        sim.write(disk, 4096, b"two")
        before = (sim.admin, sim.backup_user, sim.fingerprints, sim.worker_vm_uuid, sim.admin_token)
    with Simulator(state, nodes=2) as sim:
        after = (sim.admin, sim.backup_user, sim.fingerprints, sim.worker_vm_uuid, sim.admin_token)
        assert after == before
        assert [v["name"] for v in sim.vms()].count("hcbak-worker") == 1
        assert sim.vm_record(vm)["snapUUIDs"] == [snap]
        assert sim.read_snapshot(snap, disk, 0, 3) == b"one"
        assert sim.read_live(disk, 4096, 3) == b"two"
        assert sim.snap_diff(disk, 1, 0) == [(4096, 4099)]
        assert Api(sim, 1).get(f"/VirDomain/{vm}").json()[0]["name"] == "web01"


def test_tasks_queued_before_a_stop_complete_after_restart(tmp_path: Path) -> None:
    state = tmp_path / "sim"
    with Simulator(state, nodes=1, task_delay=30) as sim:
        vm = sim.create_vm("web01", [MIB])
        resp = Api(sim).post("/VirDomainSnapshot", {"domainUUID": vm})
        tag = resp.json()["taskTag"]
    with Simulator(state, nodes=1, task_delay=0) as sim:
        sim.faults.task_delay(0)
        sim.model.s["tasks"][tag]["_due"] = 0  # pretend the 30 s have passed
        sim.wait_idle()
        assert sim.task(tag)["state"] == "COMPLETE"  # type: ignore[index]
        assert len(sim.snapshots(vm)) == 1


def test_seed_demo_builds_the_sample_cluster_once(tmp_path: Path) -> None:
    with Simulator(tmp_path / "sim", nodes=1) as sim:
        names = seed_demo(sim, scale=0.25)
        assert set(names) >= {"web01", "web02", "db01", "win01", "dr-web01"}
        tagged = [v["name"] for v in sim.vms() if GROUP_TAG in v["tags"].split(",")]
        assert sorted(tagged) == ["db01", "web01", "web02"]
        web01, web02 = sim.disk_uuids("web01"), sim.disk_uuids("web02")
        size = sim.vm_record("web01")["blockDevs"][0]["capacity"]
        assert sim.read_live(web01[0], 0, size) == sim.read_live(web02[0], 0, size)
        assert any(sim.read_live(web01[0], 0, size))
        types = [b["type"] for b in sim.vm_record("win01")["blockDevs"]]
        assert "NVRAM" in types
        assert "IDE_CDROM" in [b["type"] for b in sim.vm_record("db01")["blockDevs"]]
        replica = sim.vm_record("dr-web01")
        assert replica["sourceVirDomainUUID"] and len(replica["snapUUIDs"]) == 2
        assert seed_demo(sim, scale=0.25) == names
        assert len(sim.vms()) == len(names) + 1  # + the worker


def test_fill_is_deterministic_and_partly_sparse(tmp_path: Path) -> None:
    with Simulator(tmp_path / "sim", nodes=1) as sim:
        a, b = (sim.disk_uuids(sim.create_vm(n, [4 * MIB]))[0] for n in ("a", "b"))
        sim.fill(a, seed=7, written=0.5)
        sim.fill(b, seed=7, written=0.5)
        data = sim.read_live(a, 0, 4 * MIB)
        assert data == sim.read_live(b, 0, 4 * MIB)
        extents = [data[i : i + (256 << 10)] for i in range(0, 4 * MIB, 256 << 10)]
        assert 0 < sum(1 for e in extents if not any(e)) < len(extents)
        assert sim.snap_diff(a, 0, 0)  # everything written is in the epoch-0 log
