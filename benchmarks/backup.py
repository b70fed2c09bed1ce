"""Backup throughput and memory: a full and a 1%-changed incremental run through the CLI.

The simulator runs in this process (real HTTPS on 127.0.0.1); `hcbak job run` runs as a
child process, measured alone (wall time and peak RSS via wait4). The disk follows
benchmarks/image.py: 40% never written, 35% compressible, 25% random, at 1 MiB regions;
the incremental run follows 1% of the written regions overwritten (changed_writes).

    .venv/bin/python benchmarks/backup.py                 # 256 MiB, quick
    .venv/bin/python benchmarks/backup.py --size 4GiB     # the documented targets
    .venv/bin/python benchmarks/backup.py --threads 1 2 3 # pipeline threads per disk
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from image import HOLE, REGION, _Bytes, changed_writes, region_kinds
from measure import parse_size, run_measured

from hcbak.cli.sim import sim_cluster_config
from hcbak.config import Config, JobConfig, RepoConfig, save_config
from hcbak.repo import init_repo
from hcbak.secrets import SecretRef
from hcbak.sim import Simulator

MiB = 1 << 20
HCBAK = [sys.executable, "-m", "hcbak"]


def fill_disk(sim: Simulator, disk: str, size: int, seed: int = 42) -> None:
    """Guest writes that produce benchmarks/image.py's layout on the simulated disk."""
    src = _Bytes(seed)
    for i, kind in enumerate(region_kinds(size, seed)):
        if kind != HOLE:
            data = src.random(REGION) if kind == "random" else src.text(i, REGION)
            sim.write(disk, i * REGION, data)


def setup(work: Path, sim: Simulator, size: int, encrypt: bool) -> dict[str, str]:
    password = sim.backup_user[1]
    vm = sim.create_vm("bench01", [size], tags=["bench"])
    fill_disk(sim, sim.disk_uuids(vm)[0], size)
    env = {**os.environ, "HCBAK_BENCH_PW": password, "HCBAK_CONFIG": str(work / "config.yaml"),
           "HCBAK_STATE_DIR": str(work / "state"), "HCBAK_BENCH_PASSPHRASE": "bench"}  # fmt: skip
    passphrase = SecretRef(env="HCBAK_BENCH_PASSPHRASE") if encrypt else None
    config = Config(
        path=work / "config.yaml",
        clusters={
            "sim": sim_cluster_config(
                sim,
                "sim",
                password_env="HCBAK_BENCH_PW",
                read_timeout=120.0,
            )
        },
        repositories={
            "bench": RepoConfig(name="bench", path=str(work / "repo"), passphrase=passphrase)
        },
        jobs={"bench": JobConfig(name="bench", cluster="sim", repo="bench", tags=["bench"])},
    )
    save_config(config)
    return env


def one_run(env: dict[str, str], label: str, size: int, threads: int) -> dict[str, Any]:
    m = run_measured(
        [*HCBAK, "job", "run", "bench", "--json"], env={**env, "HCBAK_READ_THREADS": str(threads)}
    )
    if m.returncode not in (0, 1):
        raise RuntimeError(f"{label} run failed ({m.returncode}): {m.stderr.strip()[-800:]}")
    job = json.loads(m.stdout)["jobs"][0]
    totals = job["totals"]
    return {
        "run": label,
        "threads": threads,
        "seconds": m.seconds,
        "mib_s": size / MiB / m.seconds,
        "rss_mib": m.peak_rss_mib,
        "read_mib": totals["bytes_read"] / MiB,
        "stored_mib": totals["bytes_stored"] / MiB,
        "bottleneck": job["bottleneck"]["stage"],
    }


def bench(size: int, threads: int, encrypt: bool) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="hcbak-bench-") as tmp:
        work = Path(tmp)
        with Simulator(work / "sim", nodes=1, task_delay=0.005) as sim:
            env = setup(work, sim, size, encrypt)
            init_repo(work / "repo", passphrase=None if not encrypt else _secret("bench"))
            full = one_run(env, "full", size, threads)
            disk = sim.disk_uuids("bench01")[0]
            for offset, data in changed_writes(size):
                sim.write(disk, offset, data)
            incr = one_run(env, "incremental 1%", size, threads)
    return [full, incr]


def _secret(value: str) -> Any:
    from hcbak.secrets import Secret

    return Secret(value)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="256MiB", help="disk size (default 256MiB; e.g. 4GiB)")
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[3], help="pipeline threads per disk"
    )
    parser.add_argument("--encrypt", action="store_true", help="use an encrypted repository")
    args = parser.parse_args()
    size = parse_size(args.size)
    rows = [row for t in args.threads for row in bench(size, t, args.encrypt)]
    print(f"hcbak backup, disk {size / MiB:.0f} MiB (40% holes, 35% text, 25% random), "
          f"{'encrypted' if args.encrypt else 'unencrypted'} repo, 1 MiB blocks, lz4")  # fmt: skip
    print(
        f"{'run':<16}{'threads':>8}{'seconds':>9}{'MiB/s':>9}{'peak RSS':>10}"
        f"{'read MiB':>10}{'stored MiB':>11}  bottleneck"
    )
    for r in rows:
        print(f"{r['run']:<16}{r['threads']:>8}{r['seconds']:>9.2f}{r['mib_s']:>9.0f}{r['rss_mib']:>9.0f}M"
              f"{r['read_mib']:>10.0f}{r['stored_mib']:>11.1f}  {r['bottleneck']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
