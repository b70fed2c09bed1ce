"""Sample cluster content for `hcbak sim serve --seed`, `hcbak demo` and benchmarks.

Covers what a backup has to cope with: several disks per VM, a tag-selected group,
two VMs with identical content (dedup), a UEFI VM with NVRAM, a CD-ROM to skip, a
disk with snapshots disabled, a replication target with replicated snapshots, and
one VM with guest tools (db01: a quiesce job can quiesce it on a 9.7.1+ cluster).
"""

from __future__ import annotations

from hcbak.sim.simulator import Simulator

MIB = 1 << 20
GROUP_TAG = "backup-nightly"
SEEDED = ("web01", "web02", "db01", "win01", "dr-web01")


def seed_demo(sim: Simulator, scale: float = 1.0) -> dict[str, str]:
    """Create the sample VMs (once; a restarted simulator keeps them). Returns
    name -> uuid. `scale` multiplies disk sizes (1.0: 4-32 MiB disks)."""
    existing = {vm["name"]: vm["uuid"] for vm in sim.vms()}
    if "web01" in existing:
        return {name: existing[name] for name in SEEDED if name in existing}

    def size(mib: int) -> int:
        return max(MIB, int(mib * scale) * MIB)

    out: dict[str, str] = {}
    web = sim.create_vm("web01", [size(16), size(8)], tags=(GROUP_TAG, "web"))
    out["web01"] = web
    for i, disk in enumerate(sim.disk_uuids(web)):
        sim.fill(disk, seed=100 + i, written=0.6, compressible=0.6)

    # Same content as web01: a repository should store these blocks once.
    twin = sim.create_vm("web02", [size(16), size(8)], tags=(GROUP_TAG, "web"))
    out["web02"] = twin
    for i, disk in enumerate(sim.disk_uuids(twin)):
        sim.fill(disk, seed=100 + i, written=0.6, compressible=0.6)

    db = sim.create_vm(
        "db01", [size(32), size(4)], tags=(GROUP_TAG, "db"), cdrom=True, mem=8 << 30,
        guest_tools=True,  # its guest agent answers: quiesce works from 9.7.1
    )  # fmt: skip
    out["db01"] = db
    data, scratch = sim.disk_uuids(db)
    sim.fill(data, seed=200, written=0.8, compressible=0.3)
    sim.set_disable_snapshotting(scratch)  # a scratch disk the user excluded

    uefi = sim.create_vm("win01", [size(16)], uefi=True, tags=("backup-weekly",))
    out["win01"] = uefi
    sim.fill(sim.disk_uuids(uefi)[0], seed=300, written=0.5, compressible=0.7)

    replica = sim.create_replica("dr-web01", [size(16)])
    out["dr-web01"] = replica
    disk = sim.disk_uuids(replica)[0]
    sim.fill(disk, seed=100, written=0.6, compressible=0.6)
    sim.replicate_snapshot(replica, label="replica-1")
    sim.write(disk, 0, b"replicated change".ljust(4096, b"."))
    sim.replicate_snapshot(replica, label="replica-2")
    return out
