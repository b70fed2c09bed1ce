"""Whole-VM restore against the simulator: real backup engine, real HTTPS, real CLI."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from harness import HCBAK

from hcbak.engine.connect import connection_settings
from hcbak.engine.restore_disk import restore_disk
from hcbak.engine.restore_vm import VmOptions, restore_vm
from hcbak.errors import HcbakError, UsageError
from hcbak.hypercore import hypercore_session
from hcbak.repo import open_repo

from .helpers import MiB, RestoreLab, restore_lab

DATA_TYPES = ("VIRTIO_DISK", "SCSI_DISK", "IDE_DISK")


@pytest.fixture
def lab(tmp_path: Path) -> Any:
    with restore_lab(tmp_path) as lab:
        yield lab


def make_vm(lab: RestoreLab, name: str = "web01", **kw: Any) -> str:
    vm = lab.sim.create_vm(
        name,
        [4 * MiB, 2 * MiB + 512 * 1024],
        tags=("nightly", "web"),
        description="front end",
        mem=3 << 30,
        vcpus=3,
        nics=2,
        **kw,
    )
    for i, disk in enumerate(lab.sim.disk_uuids(vm)):
        lab.sim.fill(disk, seed=10 + i, written=0.5)
    return vm


def disks_by_slot(lab: RestoreLab, vm_uuid: str) -> dict[int, dict[str, Any]]:
    return {d["slot"]: d for d in lab.sim.vm_record(vm_uuid)["blockDevs"]}


def image_bytes(lab: RestoreLab, disk_uuid: str, snapshot: str | None = None) -> bytes:
    dest = lab.tmp / f"img-{disk_uuid}-{snapshot}"
    if snapshot:
        lab.sim.snapshot_image(snapshot, disk_uuid, dest)
    else:
        lab.sim.disk_image(disk_uuid, dest)
    data = dest.read_bytes()
    dest.unlink()
    return data


def run_cli(lab: RestoreLab, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HCBAK_")}
    env.update(lab.env)
    return subprocess.run(
        [*HCBAK, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_disk_left_out_of_the_point_makes_the_restore_exit_1_naming_it(
    lab: RestoreLab,
) -> None:
    original = make_vm(lab)
    skipped = lab.sim.disk_uuids(original)[1]
    lab.sim.set_disable_snapshotting(skipped)
    lab.back_up()
    proc = run_cli(lab, "restore", "vm", "web01@latest", "--as", "web01-partial")
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 1, proc.stderr  # restored, but not the whole VM
    assert f"warning: not restored (no data in the point): slot 1 VIRTIO_DISK {skipped}" in (
        proc.stderr
    )


def test_an_unverified_cluster_is_a_warning_line_of_the_restore(lab: RestoreLab) -> None:
    from hcbak.config import TLSConfig, save_config

    make_vm(lab)
    lab.back_up()
    lab.config.clusters[next(iter(lab.config.clusters))].tls = TLSConfig(insecure=True)
    save_config(lab.config)
    proc = run_cli(lab, "restore", "vm", "web01@latest", "--as", "web01-insecure")
    assert proc.returncode == 0, proc.stderr
    assert "\nwarning: TLS certificates of cluster " in "\n" + proc.stderr, proc.stderr


def test_restore_as_new_vm_matches_point_content_and_definition(lab: RestoreLab) -> None:
    original = make_vm(lab, uefi=True, cdrom=True)
    point = lab.back_up()
    before = disks_by_slot(lab, original)
    expected = {
        slot: image_bytes(lab, d["uuid"], point.snapshot_uuid)
        for slot, d in before.items()
        if d["type"] in (*DATA_TYPES, "NVRAM")
    }
    # Change the VM after the backup: the restore must bring back the point, not today.
    for disk in lab.sim.disk_uuids(original):
        lab.sim.write(disk, 0, b"changed after backup" * 100)

    proc = run_cli(lab, "restore", "vm", "web01@latest", "--as", "web01-restored", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    result = json.loads(proc.stdout)
    new_uuid = result["vm_uuid"]
    # The CD-ROM holds no data in the point: reported, not silently dropped.
    assert [d for d in result["not_restored"] if "IDE_CDROM" in d] == result["not_restored"]
    assert result["not_restored"] and "not restored" in proc.stderr
    new = lab.sim.vm_record(new_uuid)
    old = lab.sim.vm_record(original)
    assert new["name"] == "web01-restored"
    for field in ("description", "tags", "mem", "numVCPU", "machineType"):
        assert new[field] == old[field], field
    assert [n["vlan"] for n in new["netDevs"]] == [n["vlan"] for n in old["netDevs"]]
    # New MACs by default: two VMs with one MAC on a VLAN would break each other.
    assert not {n["macAddress"] for n in new["netDevs"]} & {n["macAddress"] for n in old["netDevs"]}
    assert new["state"] in ("SHUTOFF", "SHUTDOWN")

    restored = disks_by_slot(lab, new_uuid)
    assert set(expected) <= set(restored)
    for slot, content in expected.items():
        assert restored[slot]["type"] == before[slot]["type"]
        assert restored[slot]["capacity"] == before[slot]["capacity"]
        assert image_bytes(lab, restored[slot]["uuid"]) == content, f"slot {slot}"
    # Boot order points at the new disks, in the same slots as before.
    slot_of_old = {d["uuid"]: s for s, d in before.items()}
    assert [restored[slot_of_old[u]]["uuid"] for u in old["bootDevices"]] == new["bootDevices"]
    # Every attach kept the disk ids (regenerateDiskID false); no uploaded disk is left.
    attached = [d for d in lab.sim.block_devices() if d["vm"] == new_uuid]
    assert attached and all(d["regenerateDiskID"] is False for d in attached)
    assert lab.sim.virtual_disks() == []


def test_incremental_point_restores_like_a_full_point_of_the_same_content(
    lab: RestoreLab,
) -> None:
    vm = make_vm(lab)
    lab.back_up()
    disk = lab.sim.disk_uuids(vm)[0]
    lab.sim.write(disk, 3 * MiB + 100, b"incremental change" * 50)
    incremental = lab.back_up()
    full = lab.back_up(full=True)
    reasons = [d.cbt_reason for d in incremental.disks]
    assert any(d.incremental for d in incremental.disks), f"backup fell back to full: {reasons}"
    assert not any(d.incremental for d in full.disks)
    outputs = {}
    with open_repo(lab.repo_path, lock="shared") as repo:
        for name, point in (("inc", incremental), ("full", full)):
            for fmt in ("raw", "qcow2"):
                out = lab.tmp / f"{name}.{fmt}"
                restore_disk(repo, point, "0", out, fmt)
                outputs[name, fmt] = out
    assert outputs["inc", "raw"].read_bytes() == outputs["full", "raw"].read_bytes()
    assert outputs["inc", "raw"].read_bytes() == image_bytes(lab, disk)
    assert outputs["inc", "qcow2"].read_bytes() == outputs["full", "qcow2"].read_bytes()


def _restore(lab: RestoreLab, options: VmOptions, progress: Any = None) -> Any:
    with open_repo(lab.repo_path, lock="shared") as repo:
        point = repo.load_point(repo.resolve_point("web01@latest"))
        with hypercore_session(connection_settings(lab.config.cluster("lab"))) as client:
            return restore_vm(repo, point, client, options, progress)


def test_replace_renames_the_original_powered_off_and_takes_its_name(lab: RestoreLab) -> None:
    original = make_vm(lab)
    point = lab.back_up()
    assert lab.sim.vm_record(original)["state"] == "RUNNING"
    count = len(lab.sim.vms())
    result = _restore(lab, VmOptions(replace=True, power_on=True, shutdown_timeout=5))
    renamed = lab.sim.vm_record(original)
    assert renamed["name"].startswith("web01-replaced-") and renamed["name"] == result.replaced_name
    assert renamed["state"] in ("SHUTOFF", "SHUTDOWN")
    assert len(renamed["blockDevs"]) == 2, "nothing of the original is deleted"
    new = lab.sim.vm_record(result.vm_uuid)
    assert new["name"] == "web01" and new["state"] == "RUNNING"
    assert len(lab.sim.vms()) == count + 1
    disk = disks_by_slot(lab, result.vm_uuid)[0]["uuid"]
    assert image_bytes(lab, disk) == image_bytes(
        lab, disks_by_slot(lab, original)[0]["uuid"], point.snapshot_uuid
    )


def test_existing_name_without_replace_is_refused_before_anything_is_created(
    lab: RestoreLab,
) -> None:
    make_vm(lab)
    lab.back_up()
    count = len(lab.sim.vms())
    with pytest.raises(UsageError, match="already exists"):
        _restore(lab, VmOptions())
    assert len(lab.sim.vms()) == count


@pytest.mark.parametrize("replace", [False, True])
def test_upload_failure_midway_leaves_no_half_created_vm(lab: RestoreLab, replace: bool) -> None:
    original = make_vm(lab)
    lab.back_up()
    before = {vm["uuid"]: (vm["name"], vm["state"]) for vm in lab.sim.vms()}

    def break_second_upload(label: str, done: int, total: int) -> None:
        # When disk 0 has been streamed, arm the one-shot fault: the next upload (disk 1)
        # is cut after 100 KiB, while disk 0 is already attached to the new VM.
        if label.startswith("slot 0") and done >= total:
            lab.sim.faults.fail_upload_after(100 * 1024)

    with pytest.raises(HcbakError):
        _restore(
            lab,
            VmOptions(name=None if replace else "web01-copy", replace=replace),
            break_second_upload,
        )
    after = {vm["uuid"]: (vm["name"], vm["state"]) for vm in lab.sim.vms()}
    assert after == before
    created = [
        d for d in lab.sim.block_devices(include_deleted=True) if d.get("sourceVirtualDiskUUID")
    ]
    assert len(created) == 1 and created[0]["deleted"], "disk 0 was attached, then removed"
    assert lab.sim.vm_record(original)["name"] == "web01"
    assert lab.sim.virtual_disks() == []


def test_replace_failing_after_the_rename_gives_the_original_back(lab: RestoreLab) -> None:
    original = make_vm(lab)
    lab.back_up()
    before = {vm["uuid"]: (vm["name"], vm["state"]) for vm in lab.sim.vms()}

    def break_final_rename(label: str, done: int, total: int) -> None:
        # After the last disk, the next PATCH of the new VM is its rename to "web01",
        # which comes after the original was shut down and renamed: make it fail.
        if label.startswith("slot 1") and done >= total:
            building = next(v for v in lab.sim.vms() if "-restoring-" in v["name"])
            lab.sim.faults.fail_next(10, "PATCH", f"/VirDomain/{building['uuid']}")

    with pytest.raises(HcbakError):
        _restore(lab, VmOptions(replace=True, shutdown_timeout=5), break_final_rename)
    lab.sim.wait_idle()
    lab.sim.faults.clear()
    assert {vm["uuid"]: (vm["name"], vm["state"]) for vm in lab.sim.vms()} == before
    assert lab.sim.vm_record(original)["state"] == "RUNNING"
    renames = [
        body["name"]
        for _, method, path, body in lab.sim.requests
        if method == "PATCH" and path.endswith(original) and isinstance(body, dict)
    ]
    assert renames[0].startswith("web01-replaced-") and renames[-1] == "web01", renames
