"""Simulator benchmark: snapshot creation time vs disk size, clone and read speed.

    .venv/bin/python benchmarks/sim_snapshot.py            # 4 GiB disk (sparse)
    .venv/bin/python benchmarks/sim_snapshot.py --size 64  # quick check, MiB

The acceptance bar (issue 3): a snapshot of a 4 GiB disk in < 50 ms. The disk is
sparse with --written MiB of scattered data, so the run stays light on a shared box.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import requests

from hcbak.sim import Simulator

MIB = 1 << 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="disk size in MiB")
    parser.add_argument("--written", type=int, default=64, help="MiB of data written")
    parser.add_argument("--rounds", type=int, default=5, help="snapshots to time")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, Simulator(Path(tmp), nodes=1, task_delay=0) as sim:
        vm = sim.create_vm("bench", [args.size * MIB])
        disk = sim.disk_uuids(vm)[0]
        chunk = os.urandom(MIB)
        step = max(1, args.size // max(1, args.written))
        for i in range(0, args.size, step)[: args.written]:
            sim.write(disk, i * MIB, chunk)

        session = requests.Session()
        session.trust_env = False  # else REQUESTS_CA_BUNDLE overrides verify
        session.verify = str(sim.cert_paths[0])
        session.auth = sim.admin
        base = sim.node_urls[0] + "/rest/v1"

        model_ms, rest_ms, write_ms = [], [], []
        for n in range(args.rounds):
            start = time.perf_counter()
            sim.model.take_snapshot(f"bench-{n}", vm, "bench", "USER", False)
            model_ms.append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            resp = session.post(base + "/VirDomainSnapshot", json={"domainUUID": vm}, timeout=30)
            resp.raise_for_status()
            rest_ms.append((time.perf_counter() - start) * 1000)  # task_delay=0: done on return
            start = time.perf_counter()
            sim.write(disk, 0, b"x")  # first write after a snapshot unshares the live file
            write_ms.append((time.perf_counter() - start) * 1000)

        snap = sim.snapshots(vm)[-1]["uuid"]
        body = {"snapUUID": snap, "template": {"virDomainUUID": sim.worker_vm_uuid}}
        start = time.perf_counter()
        created = session.post(base + f"/VirDomainBlockDevice/{disk}/clone", json=body, timeout=30)
        clone_ms = (time.perf_counter() - start) * 1000
        dev = sim.device_root / "disk" / "by-id" / f"virtio-{created.json()['createdUUID'][:20]}"
        start = time.perf_counter()
        read, limit = 0, min(args.size, 1024) * MIB  # the first GiB is plenty for a rate
        with open(dev, "rb", buffering=0) as f:
            buf = bytearray(4 * MIB)
            while read < limit and (n := f.readinto(buf)):
                read += n
        read_s = time.perf_counter() - start

    print(f"disk {args.size} MiB sparse, {args.written} MiB written, {args.rounds} rounds")
    print(f"snapshot (model)          median {statistics.median(model_ms):8.2f} ms")
    print(f"snapshot (REST, complete) median {statistics.median(rest_ms):8.2f} ms")
    print(f"first guest write after   median {statistics.median(write_ms):8.2f} ms")
    print(f"clone onto worker (REST)         {clone_ms:8.2f} ms")
    print(f"read clone device                {read / MIB / read_s:8.0f} MiB/s")
    verdict = "PASS" if statistics.median(model_ms) < 50 else "FAIL"
    print(f"4 GiB acceptance (< 50 ms): {verdict}")


if __name__ == "__main__":
    main()
