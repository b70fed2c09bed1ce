"""Many VMs in one job: per-VM overhead of a full and an incremental run (issue 21).

The simulator runs in this process (real HTTPS on 127.0.0.1, one node); `hcbak job run`
runs as a child with `--parallel` VMs at a time and `--json`, its stderr the plain
display (one line per event, as cron mails it). Every VM has one small disk with a
little data, so the data transfer is a small part of the run and what is left is the
per-VM cost: API calls (counted from the simulator's request log) and seconds.

    .venv/bin/python benchmarks/vms.py --vms 200          # the issue's size
    .venv/bin/python benchmarks/vms.py --vms 25 100 200   # growth: per-VM cost flat?

Per VM: calls = requests the run made / VMs; s/VM = wall time x parallel / VMs (the
time one VM slot is busy); beyond data = s/VM less the pipeline's own thread-seconds
per VM (source read, hashing, store: the data transfer). Lines/VM = stderr lines of
the plain display per VM. The busiest endpoints are listed so a call that grows with
the cluster (a list of every VM fetched per VM) shows at once.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import run_measured

from hcbak.cli.sim import sim_cluster_config
from hcbak.config import Config, JobConfig, RepoConfig, save_config
from hcbak.repo import init_repo
from hcbak.sim import Simulator

MiB = 1 << 20
HCBAK = [sys.executable, "-m", "hcbak"]
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f-]{27,}|[0-9a-f]{32,}|(?<=/)\d+(?=/|$)")


def endpoint(method: str, path: str) -> str:
    """`GET /rest/v1/VirDomain/{id}`: the request log's path without uuids or queries."""
    return f"{method} {_UUID.sub('{id}', path.split('?')[0])}"


def setup(work: Path, sim: Simulator, n_vms: int, disk_mib: int) -> dict[str, str]:
    for i in range(n_vms):
        vm = sim.create_vm(f"vm{i:03d}", [disk_mib * MiB], tags=["fleet"])
        disk = sim.disk_uuids(vm)[0]
        sim.write(disk, 0, os.urandom(MiB))  # one written block per disk
    env = {
        **os.environ,
        "HCBAK_BENCH_PW": sim.backup_user[1],
        "HCBAK_CONFIG": str(work / "config.yaml"),
        "HCBAK_STATE_DIR": str(work / "state"),
    }
    cluster = sim_cluster_config(sim, "sim", password_env="HCBAK_BENCH_PW", read_timeout=120.0)
    config = Config(
        path=work / "config.yaml",
        clusters={"sim": cluster},
        repositories={"fleet": RepoConfig(name="fleet", path=str(work / "repo"))},
        jobs={"fleet": JobConfig(name="fleet", cluster="sim", repo="fleet", tags=["fleet"])},
    )
    save_config(config)
    init_repo(work / "repo", passphrase=None)
    return env


def one_run(
    sim: Simulator, env: dict[str, str], label: str, n_vms: int, parallel: int
) -> dict[str, Any]:
    with sim._req_lock:
        sim.requests.clear()
    argv = [*HCBAK, "job", "run", "fleet", "--json", "--parallel", str(parallel)]
    m = run_measured(argv, env=env)
    if m.returncode not in (0, 1):
        raise RuntimeError(f"{label} failed ({m.returncode}): {m.stderr.strip()[-800:]}")
    with sim._req_lock:
        calls = Counter(endpoint(method, path) for _node, method, path, _body in sim.requests)
    job = json.loads(m.stdout)["jobs"][0]
    t = job["totals"]
    b = job["bottleneck"]
    data_s = b["source_read_seconds"] + b["hashing_seconds"] + b["store_seconds"]
    slot_s = m.seconds * parallel / n_vms
    return {
        "run": label,
        "vms": n_vms,
        "ok": t["vms_ok"],
        "seconds": m.seconds,
        "rss_mib": m.peak_rss_mib,
        "calls_per_vm": sum(calls.values()) / n_vms,
        "s_per_vm": slot_s,
        "beyond_data_per_vm": slot_s - data_s / n_vms,
        "lines_per_vm": len(m.stderr.splitlines()) / n_vms,
        "top": calls.most_common(6),
    }


def bench(n_vms: int, parallel: int, disk_mib: int) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="hcbak-vms-") as tmp:
        work = Path(tmp)
        with Simulator(work / "sim", nodes=1, task_delay=0.005) as sim:
            t0 = time.perf_counter()
            env = setup(work, sim, n_vms, disk_mib)
            print(f"setup of {n_vms} VMs: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
            full = one_run(sim, env, "full", n_vms, parallel)
            for i in range(n_vms):
                sim.write(sim.disk_uuids(f"vm{i:03d}")[0], MiB, os.urandom(4096))
            incr = one_run(sim, env, "incremental", n_vms, parallel)
    return [full, incr]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vms", type=int, nargs="+", default=[200], help="VMs in the job")
    parser.add_argument("--parallel", type=int, default=4, help="VMs backed up at once")
    parser.add_argument("--disk-mib", type=int, default=16, help="each VM's disk, MiB")
    args = parser.parse_args()
    rows = [row for n in args.vms for row in bench(n, args.parallel, args.disk_mib)]
    print(f"hcbak job run, one {args.disk_mib} MiB disk per VM (1 MiB written), "
          f"--parallel {args.parallel}, simulator with one node")  # fmt: skip
    print("| VMs | run | ok | seconds | peak RSS MiB | calls/VM | s/VM | beyond data s/VM "
          "| lines/VM |")  # fmt: skip
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['vms']} | {r['run']} | {r['ok']} | {r['seconds']:.1f} | {r['rss_mib']:.0f} | "
              f"{r['calls_per_vm']:.1f} | {r['s_per_vm']:.3f} | {r['beyond_data_per_vm']:.3f} | "
              f"{r['lines_per_vm']:.1f} |")  # fmt: skip
    for r in rows:
        top = ", ".join(f"{e} x{c}" for e, c in r["top"])
        print(f"{r['vms']} VMs {r['run']}: {top}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
