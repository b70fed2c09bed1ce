"""Core contract: snapshot, snapDiff, clone onto the worker, device file, delete."""

from __future__ import annotations

from hcbak.sim import Simulator

from .helpers import Api

MIB = 1 << 20


def test_snapshot_clone_to_worker_exposes_frozen_content_until_deleted(
    sim: Simulator, api: Api
) -> None:
    vm = sim.create_vm("web01", [4 * MIB])
    disk = sim.disk_uuids(vm)[0]
    sim.write(disk, 0, b"before")
    snap = api.mutate(
        "POST", "/VirDomainSnapshot", {"domainUUID": vm, "label": "a", "replication": False}
    )["createdUUID"]
    sim.write(disk, 0, b"AFTER!")
    clone = api.mutate(
        "POST",
        f"/VirDomainBlockDevice/{disk}/clone",
        {
            "snapUUID": snap,
            "options": {"regenerateDiskID": False},
            "template": {
                "virDomainUUID": sim.worker_vm_uuid,
                "type": "VIRTIO_DISK",
                "capacity": 4 * MIB,
            },
        },
    )["createdUUID"]
    dev = sim.device_root / "disk" / "by-id" / f"virtio-{clone[:20]}"
    assert dev.read_bytes()[:6] == b"before"
    assert dev.stat().st_size == 4 * MIB
    assert sim.read_live(disk, 0, 6) == b"AFTER!"
    api.mutate("DELETE", f"/VirDomainBlockDevice/{clone}")
    assert not dev.exists()
