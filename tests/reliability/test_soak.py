"""Soak: many incremental runs with random guest writes, then every point restores
bit-exact through `hcbak restore disk`. A small run is part of `make test`; the large
one (`-m soak`, `make soak`) runs a hundred incrementals over two VMs and three disks.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from engine.helpers import MiB, lab

from .helpers import Ledger, cli, file_sha256, guest_writes

pytestmark = pytest.mark.reliability

SMALL = {"runs": 10, "disks": [4 * MiB], "vms": 1}
LARGE = {"runs": 100, "disks": [32 * MiB, 8 * MiB], "vms": 2}


@pytest.mark.parametrize(
    "size",
    [pytest.param(SMALL, id="small"), pytest.param(LARGE, id="large", marks=pytest.mark.soak)],
)
def test_many_incremental_runs_then_every_point_restores_bit_exact(
    tmp_path: Path, size: dict[str, object]
) -> None:
    rnd = random.Random(2026)
    runs, disk_sizes, vm_count = size["runs"], size["disks"], size["vms"]
    assert isinstance(runs, int) and isinstance(disk_sizes, list) and isinstance(vm_count, int)
    with lab(tmp_path) as L:
        disks: list[str] = []
        for v in range(vm_count):
            vm = L.sim.create_vm(
                f"soak{v:02d}", disk_sizes[: 2 - v] or disk_sizes, tags=["nightly"]
            )
            for d in L.sim.disk_uuids(vm):
                L.sim.fill(d, seed=rnd.randrange(1000))
                disks.append(d)
        ledger = Ledger(L, disks)
        for n in range(runs):
            for d in disks:
                if rnd.random() < 0.7:  # some disks do not change between runs
                    guest_writes(L, d, rnd, count=rnd.randrange(1, 6))
            live = ledger.live_hashes()
            res = cli(L.env, "job", "run", "nightly", *(["--full"] if n == runs // 2 else []))
            res.assert_clean()
            assert res.code == 0, (n, res.err)
            ledger.record_new(live)
        assert len(ledger.expected) == runs * vm_count
        for pid, hashes in ledger.expected.items():
            for slot, (_disk, digest) in enumerate(hashes.items()):
                out = tmp_path / f"{pid}-{slot}.raw"
                res = cli(L.env, "restore", "disk", pid, "--disk", str(slot), "--to", str(out))
                assert res.code == 0, res.err
                assert file_sha256(out) == digest, (pid, slot)
                out.unlink()
        verify = cli(L.env, "repo", "verify", "main", "--read-data")
        assert verify.code == 0, verify.err
