"""Big sparse disks and long change lists: does memory stay flat? (issue 21)

1. Peak RSS of `hcbak job run` for a full and a 1-block incremental backup of sparse
   disks (64 MiB of data spread over each), from 1 GiB up to 2 TiB: the curve of
   `run.py --rss-scaling` (1, 4, 16 GiB) extended to 2 TiB. The simulator's disks are
   sparse files, so a 2 TiB disk costs 64 MiB here.
2. A snapDiff answer of `--intervals` (default 1 M) changed intervals: the simulator
   serves it over HTTPS; a child process asks for it with hcbak's client
   (`snap_diff`) and aligns it to the block grid (`cbt.incremental_plan`), and reports
   its RSS before, the peak during (VmHWM, reset before each step) and what each step
   holds after it.

    .venv/bin/python benchmarks/sparse.py                      # both, 1/4/16 GiB + 2 TiB
    .venv/bin/python benchmarks/sparse.py --sizes 1G 2T --skip-intervals
    .venv/bin/python benchmarks/sparse.py --skip-disks --intervals 100000 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import parse_size, run_measured

from hcbak.cli.sim import sim_cluster_config
from hcbak.config import Config, JobConfig, RepoConfig, save_config
from hcbak.repo import init_repo
from hcbak.sim import Simulator

MiB, GiB = 1 << 20, 1 << 30
HCBAK = [sys.executable, "-m", "hcbak"]


def _config(work: Path, sim: Simulator, jobs: dict[str, JobConfig]) -> dict[str, str]:
    cluster = sim_cluster_config(sim, "sim", password_env="HCBAK_BENCH_PW", read_timeout=600.0)
    save_config(
        Config(
            path=work / "config.yaml",
            clusters={"sim": cluster},
            repositories={"bench": RepoConfig(name="bench", path=str(work / "repo"))},
            jobs=jobs,
        )
    )
    return {
        **os.environ,
        "HCBAK_BENCH_PW": sim.backup_user[1],
        "HCBAK_CONFIG": str(work / "config.yaml"),
        "HCBAK_STATE_DIR": str(work / "state"),
    }


def label(size: int) -> str:
    return f"{size // (1 << 40)} TiB" if size >= 1 << 40 else f"{size // GiB} GiB"


def disks(work: Path, sizes: list[int]) -> list[str]:
    out = []
    with Simulator(work / "sim", nodes=1, task_delay=0.005) as sim:
        jobs = {}
        for size in sizes:
            tag = f"sparse{size // GiB}g"
            vm = sim.create_vm(tag, [size], tags=[tag])
            disk = sim.disk_uuids(vm)[0]
            step = size // 64
            for n in range(64):  # 1 MiB of random data every 1/64 of the disk
                sim.write(disk, n * step, os.urandom(MiB))
            jobs[tag] = JobConfig(name=tag, cluster="sim", repo="bench", tags=[tag])
        env = _config(work, sim, jobs)
        init_repo(work / "repo")
        for size in sizes:
            tag = f"sparse{size // GiB}g"
            for run in ("full", "incremental"):
                if run == "incremental":
                    sim.write(sim.disk_uuids(tag)[0], size // 2, os.urandom(4096))
                m = run_measured([*HCBAK, "job", "run", tag, "--json"], env=env)
                if m.returncode not in (0, 1):
                    raise RuntimeError(f"{tag} {run}: {m.returncode}: {m.stderr.strip()[-500:]}")
                t = json.loads(m.stdout)["jobs"][0]["totals"]
                out.append(
                    f"| {label(size)} | {run} | {m.seconds:.2f} | {m.peak_rss_mib:.0f} | "
                    f"{t['blocks_total']} | {t['bytes_read'] // MiB} |"
                )
                print(out[-1], file=sys.stderr)
    return out


CHILD = textwrap.dedent(
    """
    import json, sys, time
    from hcbak.config import load_config
    from hcbak.engine import cbt
    from hcbak.engine.connect import connection_settings
    from hcbak.hypercore.client import hypercore_session

    def status(key):  # MiB
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024

    def reset_peak():  # VmHWM := VmRSS (Linux clear_refs 5)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    disk, serial, capacity = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    sys.stdin.readline()
    cluster = load_config().cluster("sim")
    out = {}
    with hypercore_session(connection_settings(cluster)) as hc:
        reset_peak()
        out["before"] = status("VmRSS")
        t0 = time.perf_counter()
        intervals = hc.snap_diff(disk, serial, 0)
        out["snap_diff_s"], out["snap_diff_peak"] = time.perf_counter() - t0, status("VmHWM")
        out["held"] = status("VmRSS")
        reset_peak()
        t0 = time.perf_counter()
        plan = cbt.incremental_plan(intervals, capacity, 1 << 20)
        out["plan_s"], out["plan_peak"] = time.perf_counter() - t0, status("VmHWM")
        out["plan_held"] = status("VmRSS")
        out["intervals"], out["ranges"] = len(intervals), len(plan.ranges)
    print(json.dumps(out))
    """
)


def change_lists(work: Path, counts: list[int], capacity: int) -> list[str]:
    """A 2 TiB disk whose snapDiff answers `n` intervals of 4 KiB, 1 MiB apart."""
    out = []
    with Simulator(work / "sim-cbt", nodes=1, task_delay=0.005) as sim:
        vm = sim.create_vm("cbt", [capacity], tags=["cbt"])
        disk = sim.disk_uuids(vm)[0]
        env = _config(work, sim, {})
        sim.model.take_snapshot("bench-base", vm, "bench", "USER", False)
        serial = max(sim.model.serials_of(disk))
        for n in counts:
            # Started first: a child forked from this (large) process would count the
            # parent's pages in its ru_maxrss.
            child = subprocess.Popen(
                [sys.executable, "-c", CHILD, disk, str(serial), str(capacity)],
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            stride = capacity // n
            with sim.model.lock:  # the write log the cluster would have kept
                entries = [[i * stride, i * stride + 4096] for i in range(n)]
                sim.model.s["writelog"][disk] = {str(serial): entries}
            del entries
            stdout, stderr = child.communicate("go\n")
            if child.returncode:
                raise RuntimeError(stderr[-800:])
            r = json.loads(stdout)
            out.append(
                f"| {n} | {r['before']:.0f} | {r['snap_diff_peak']:.0f} | {r['held']:.0f} | "
                f"{r['snap_diff_s']:.2f} | {r['plan_peak']:.0f} | {r['plan_held']:.0f} | "
                f"{r['plan_s']:.2f} | {r['ranges']} |"
            )
            print(out[-1], file=sys.stderr)
            with sim.model.lock:
                sim.model.s["writelog"][disk] = {}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", nargs="+", default=["1G", "4G", "16G", "2048G"])
    parser.add_argument("--intervals", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--skip-disks", action="store_true")
    parser.add_argument("--skip-intervals", action="store_true")
    args = parser.parse_args()
    sizes = [parse_size(s) for s in args.sizes]
    with tempfile.TemporaryDirectory(prefix="hcbak-sparse-") as tmp:
        work = Path(tmp)
        if not args.skip_disks:
            rows = disks(work / "disks", sizes)
            print("Sparse disks, 64 MiB of data each; the incremental changes one block.")
            print("| disk | run | seconds | peak RSS MiB | blocks | read MiB |")
            print("|---|---|---:|---:|---:|---:|")
            print("\n".join(rows))
        if not args.skip_intervals:
            rows = change_lists(work / "cbt", args.intervals, 2 << 40)
            print("snapDiff of a 2 TiB disk, 4 KiB intervals spread evenly; RSS MiB (VmRSS),")
            print("peaks from VmHWM reset before each step")
            print("| intervals | RSS before | snap_diff peak | held after | s | plan peak "
                  "| held after | s | block ranges |")  # fmt: skip
            print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
