"""transport/hotadd.py on its own: a clone made from explicit inputs, no job run.

Real parts: the simulator over HTTPS, its device folder as the worker's /dev, the
state dir's clone journal and worker lock.
"""

from __future__ import annotations

from pathlib import Path

from hcbak.engine.state import CloneJournal, WorkerLock, clone_journal_dir
from hcbak.hypercore.client import hypercore_session
from hcbak.transport.hotadd import HotAdd, Worker

from .helpers import MiB, lab


def test_a_hot_add_reads_the_snapshot_disk_and_leaves_no_clone_nor_journal_entry(
    tmp_path: Path,
) -> None:
    with lab(tmp_path) as L:
        vm = L.sim.create_vm("web01", [2 * MiB], tags=["nightly"])
        disk = L.sim.vm_record(vm)["blockDevs"][0]
        L.sim.write(disk["uuid"], 4096, b"hot-add " * 512)
        state = tmp_path / "state"
        cluster = L.config.clusters["lab"]
        with hypercore_session(cluster) as hc:
            snap = hc.create_snapshot(vm, "hotadd-test")
            L.sim.write(disk["uuid"], 4096, b"changed " * 512)  # after the snapshot
            worker = Worker(
                L.sim.worker_vm_uuid,
                Path(cluster.device_root),
                WorkerLock(state),
                CloneJournal(state),
            )
            owner = {"cluster": "lab", "job": "nightly"}
            with HotAdd(hc, worker, disk["uuid"], snap.uuid, 2 * MiB, owner=owner) as path:
                assert path.read_bytes() == L.snapshot_content(snap.uuid, disk["uuid"], 2 * MiB)
                assert b"hot-add " in path.read_bytes()[4096:8192]  # not the live disk
                (clone,) = L.worker_clones()
                journaled = [p.stem for p in clone_journal_dir(state).glob("*.json")]
                assert journaled == [clone["uuid"]]  # the pending entry gave way to it
            assert L.worker_clones() == []
            assert list(clone_journal_dir(state).glob("*.json")) == []
