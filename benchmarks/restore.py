"""Restore throughput and peak RSS: a disk to a sparse raw file, and a VM to the simulator.

    .venv/bin/python benchmarks/restore.py                 # quick check, 256 MiB
    .venv/bin/python benchmarks/restore.py --size 4GiB     # the issue's benchmark size

The image is benchmarks/image.py's VM-like mix (40% holes, 35% text, 25% random). It is
stored once through the repository API (setup, not measured); then `hcbak restore disk`
and `hcbak restore vm` run as real subprocesses, measured with wait4 (wall time and the
child's peak RSS). The raw output is checked to be byte-identical and sparse.
Target (issue 7): 4 GiB to file in <= 6.3 s (half of restic 0.14's 12.4-12.9 s).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from image import write_image
from measure import parse_size, run_measured, sha256_file

from hcbak.cli.sim import sim_cluster_config
from hcbak.config import Config, RepoConfig, save_config
from hcbak.repo import BlockMap, DiskImage, Point, init_repo, open_repo

MiB = 1 << 20
HCBAK = [sys.executable, "-m", "hcbak"]


def store_image(repo_path: Path, image: Path, size: int, block_size: int) -> str:
    """Put the image into the repository as one point of VM 'bench'; returns its id."""
    init_repo(repo_path, compression="lz4", block_size=block_size, passphrase=None)
    n_blocks = -(-size // block_size)
    block_map = BlockMap(n_blocks)
    with open_repo(repo_path, lock="shared") as repo, open(image, "rb") as fh:

        def store(i: int) -> tuple[int, bytes | None]:
            data = os.pread(fh.fileno(), block_size, i * block_size).ljust(block_size, b"\0")
            if data.count(0) == len(data):
                return i, None
            block_id = repo.block_id(data)
            repo.put_block(block_id, data)
            return i, block_id

        with ThreadPoolExecutor(4) as pool:
            for i, block_id in pool.map(store, range(n_blocks)):
                if block_id is not None:
                    block_map.set(i, block_id)
        point = Point(
            id=repo.new_point_id(),
            job="bench",
            cluster="sim",
            vm_uuid="bench-vm",
            vm_name="bench",
            created=datetime.now(UTC),
            vm={"name": "bench", "mem": 1 << 30, "numVCPU": 1, "machineType": "scale-7.2"},
            disks=[DiskImage("bench-disk-0", 0, "VIRTIO_DISK", size, block_size, block_map)],
            hcbak_version="bench",
        )
        repo.save_point(point)
        return point.id


def bench_file(
    work: Path, env: dict[str, str], point_id: str, image: Path, size: int
) -> dict[str, Any]:
    out = work / "restored.raw"
    out.unlink(missing_ok=True)
    m = run_measured(
        [*HCBAK, "restore", "disk", point_id, "--disk", "0", "--to", str(out)], env=env
    )
    if m.returncode != 0:
        raise RuntimeError(f"restore disk failed: {m.stderr.strip()[-500:]}")
    allocated = out.stat().st_blocks * 512
    identical = sha256_file(out) == sha256_file(image)
    return {
        "target": "file (raw)",
        "seconds": m.seconds,
        "mib_s": size / MiB / m.seconds,
        "rss_mib": m.peak_rss_mib,
        "allocated_mib": allocated / MiB,
        "identical": identical,
    }


def bench_sim(
    work: Path, env: dict[str, str], config: Config, point_id: str, image: Path, size: int
) -> dict[str, Any]:
    """`hcbak restore vm` into the simulator (real HTTPS on 127.0.0.1, in this process)."""
    from hcbak.sim import Simulator

    with Simulator(work / "sim", nodes=1, task_delay=0.005) as sim:
        password = sim.backup_user[1]
        config.clusters["sim"] = sim_cluster_config(
            sim, "sim", password_env="HCBAK_BENCH_PW", read_timeout=300.0, task_timeout=600.0
        )
        save_config(config)
        argv = [*HCBAK, "restore", "vm", point_id, "--as", "bench-restored"]
        m = run_measured(argv, env={**env, "HCBAK_BENCH_PW": password})
        if m.returncode != 0:
            raise RuntimeError(f"restore vm failed: {m.stderr.strip()[-500:]}")
        vm = next(v for v in sim.vms() if v["name"] == "bench-restored")
        disk = next(d for d in vm["blockDevs"] if d["slot"] == 0)
        copy = work / "sim-disk.raw"
        sim.disk_image(disk["uuid"], copy)
        identical = sha256_file(copy) == sha256_file(image)
    return {
        "target": "simulator (qcow2 upload)",
        "seconds": m.seconds,
        "mib_s": size / MiB / m.seconds,
        "rss_mib": m.peak_rss_mib,
        "allocated_mib": copy.stat().st_blocks * 512 / MiB,
        "identical": identical,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="256MiB", help="disk size (e.g. 256MiB, 4GiB)")
    parser.add_argument("--block-size", default="1MiB")
    parser.add_argument("--workdir", default=None, help="default: a temp dir (removed)")
    parser.add_argument("--file-only", action="store_true", help="skip the simulator run")
    args = parser.parse_args()
    size, block_size = parse_size(args.size), parse_size(args.block_size)
    with tempfile.TemporaryDirectory(prefix="hcbak-bench-", dir=args.workdir) as tmp:
        work = Path(tmp)
        image = work / "disk.img"
        t0 = time.perf_counter()
        write_image(image, size)
        point_id = store_image(work / "repo", image, size, block_size)
        print(f"setup: {size / MiB:.0f} MiB image stored in {time.perf_counter() - t0:.1f} s")
        env = {k: v for k, v in os.environ.items() if not k.startswith("HCBAK_")}
        env["HCBAK_CONFIG"] = str(work / "config.yaml")
        env["HCBAK_STATE_DIR"] = str(work / "state")
        config = Config(path=work / "config.yaml")
        config.repositories["bench"] = RepoConfig(
            "bench", str(work / "repo"), block_size=block_size
        )
        save_config(config)
        rows = [bench_file(work, env, point_id, image, size)]
        if not args.file_only:
            rows.append(bench_sim(work, env, config, point_id, image, size))
    print("| target | size | seconds | MiB/s | peak RSS MiB | allocated MiB | identical |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['target']} | {size / MiB:.0f} MiB | {r['seconds']:.2f} | {r['mib_s']:.0f} "
            f"| {r['rss_mib']:.0f} | {r['allocated_mib']:.0f} | {r['identical']} |"
        )
    return 0 if all(r["identical"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
