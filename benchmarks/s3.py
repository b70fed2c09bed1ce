"""hcbak against restic into the same S3 gateway (a local Ceph RGW), in one run.

Issue 20's benchmark: the image of benchmarks/run.py (4 GiB by default), backed up
- by hcbak (`hcbak job run`, real CLI, simulator in this process as in run.py) into an
  encrypted S3 repository on the gateway: a full, then `--incr-runs` 1% incrementals;
- by restic (`restic -r s3:http://127.0.0.1:PORT/BUCKET`) into another bucket of the
  same gateway: a full and the same incrementals (image copies, as benchmarks/peers.py);
- and `hcbak repo copy` of hcbak's full point from a local repository into a new S3
  repository (an empty bucket): MiB/s of the disk's size and of the bytes sent.
Each command is one child process measured alone (wall time, peak RSS via wait4).

The gateway is started here with ../shared/s3/ceph-rgw.sh (`--rgw-script`), bluestore by
default: memstore keeps every object in the OSD's RAM, and this run stores ~5 GiB
(two tools plus the copy). It is stopped at the end.

    .venv/bin/python benchmarks/s3.py --size 256MiB      # quick check
    .venv/bin/python benchmarks/s3.py                    # 4 GiB, the reference run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backup import HCBAK, setup
from image import apply_changes, changed_writes, write_image
from measure import Measured, Row, parse_size, run_measured
from peers import _sparse_copy

from hcbak.config import JobConfig, load_config, save_config
from hcbak.repo import init_repo
from hcbak.secrets import Secret
from hcbak.sim import Simulator

MiB = 1 << 20
GiB = 1 << 30
_ROOT = Path(__file__).resolve().parent.parent
# ../shared/s3/ceph-rgw.sh of the project (or of a git worktree under wt/), as tests find it
_SCRIPTS = [_ROOT.parent / "shared/s3/ceph-rgw.sh", _ROOT.parent.parent / "shared/s3/ceph-rgw.sh"]
RGW_SCRIPT = next((p for p in _SCRIPTS if p.is_file()), _SCRIPTS[0])
RSS_LIMIT = 250.0


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def start_gateway(script: Path, folder: Path, store: str) -> dict[str, str]:
    env = {**os.environ, "CEPH_RGW_STORE": store}
    proc = subprocess.run(["bash", str(script), "start", str(folder)], env=env,
                          capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"ceph-rgw.sh start failed: {proc.stderr.strip()[-800:]}")
    out = {}
    for line in proc.stdout.splitlines():
        if line.startswith("export ") and "=" in line:
            key, value = line.removeprefix("export ").split("=", 1)
            out[key] = value.strip("'\"")
    return out


def s3_client(gw: dict[str, str]) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=gw["S3_ENDPOINT_URL"],
                        aws_access_key_id=gw["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=gw["AWS_SECRET_ACCESS_KEY"],
                        region_name=gw["AWS_DEFAULT_REGION"])  # fmt: skip


def bucket_bytes(client: Any, bucket: str) -> int:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sum(o["Size"] for page in pages for o in page.get("Contents", []))


def check(m: Measured, what: str) -> Measured:
    if m.returncode not in (0, 1):
        raise RuntimeError(f"{what} failed ({m.returncode}): {m.stderr.strip()[-800:]}")
    return m


def run_hcbak(work: Path, size: int, incr_runs: int, gw: dict[str, str], client: Any,
              upload_parallel: int | None) -> list[Row]:  # fmt: skip
    """Full and incrementals into S3; a local full too, then `repo copy` of it to S3."""
    rows: list[Row] = []
    work.mkdir(parents=True, exist_ok=True)
    for bucket in ("hcbak-bench", "hcbak-copy"):
        client.create_bucket(Bucket=bucket)
    with Simulator(work / "sim", nodes=1, task_delay=0.005) as sim:
        env = {**setup(work, sim, size, encrypt=True), **gw}
        init_repo(work / "repo", passphrase=Secret(env["HCBAK_BENCH_PASSPHRASE"]))
        extra = ["--upload-parallel", str(upload_parallel)] if upload_parallel else []
        for name, bucket in (("s3", "hcbak-bench"), ("s3copy", "hcbak-copy")):
            argv = [*HCBAK, "repo", "add", name, "--s3", bucket, "--endpoint",
                    gw["S3_ENDPOINT_URL"], "--encrypt", "--passphrase-env",
                    "HCBAK_BENCH_PASSPHRASE", *extra]  # fmt: skip
            check(run_measured(argv, env=env), f"repo add {name}")
        config = load_config(work / "config.yaml")
        config.jobs["s3"] = JobConfig(name="s3", cluster="sim", repo="s3", tags=["bench"])
        save_config(config)
        # The local full point (the copy's source), then the S3 full on the same disk.
        check(run_measured([*HCBAK, "job", "run", "bench", "--json"], env=env), "local full")
        m = check(run_measured([*HCBAK, "job", "run", "s3", "--json"], env=env), "hcbak full")
        rows.append(Row("hcbak", "full", m.seconds, size / MiB / m.seconds, m.peak_rss_mib,
                        bucket_bytes(client, "hcbak-bench")))  # fmt: skip
        disk = sim.disk_uuids("bench01")[0]
        seconds, rss, growth = [], [], []
        for step in range(incr_runs):
            before = bucket_bytes(client, "hcbak-bench")
            for offset, data in changed_writes(size, step=step):
                sim.write(disk, offset, data)
            m = check(run_measured([*HCBAK, "job", "run", "s3", "--json"], env=env), "hcbak incr")
            seconds.append(m.seconds)
            rss.append(m.peak_rss_mib)
            growth.append(bucket_bytes(client, "hcbak-bench") - before)
        rows.append(Row.repeated("hcbak", "incr 1%", size, seconds, rss, growth))
    say("hcbak: repo copy of the local full point to S3")
    m = check(run_measured([*HCBAK, "repo", "copy", "bench", "s3copy", "--job", "bench",
                            "--json"], env=env), "repo copy")  # fmt: skip
    totals = json.loads(m.stdout)["totals"]
    sent = int(totals.get("bytes_sent", 0))
    rows.append(Row("hcbak", "repo copy local->S3", m.seconds, size / MiB / m.seconds,
                    m.peak_rss_mib, sent))  # fmt: skip
    rows.append(Row("hcbak", "  (bytes sent)", m.seconds, sent / MiB / m.seconds))
    return rows


def run_restic(work: Path, base: Path, size: int, incr_runs: int, gw: dict[str, str],
               client: Any) -> list[Row]:  # fmt: skip
    client.create_bucket(Bucket="restic-bench")
    url = f"s3:{gw['S3_ENDPOINT_URL']}/restic-bench"
    data = work / "restic-data"
    data.mkdir()
    img = data / "disk.img"
    _sparse_copy(base, img)
    env = {**os.environ, **gw, "RESTIC_PASSWORD": "bench"}
    restic = ["restic", "-q", "-r", url]
    check(run_measured([*restic, "init"], env=env), "restic init")
    m = check(run_measured([*restic, "backup", "disk.img"], env=env, cwd=str(data)), "restic full")
    rows = [Row("restic", "full", m.seconds, size / MiB / m.seconds, m.peak_rss_mib,
                bucket_bytes(client, "restic-bench"))]  # fmt: skip
    seconds, rss, growth = [], [], []
    for step in range(incr_runs):
        before = bucket_bytes(client, "restic-bench")
        new = data / "disk.img.new"
        _sparse_copy(img, new)
        apply_changes(new, size, step=step)
        os.replace(new, img)
        m = check(run_measured([*restic, "backup", "disk.img"], env=env, cwd=str(data)),
                  "restic incr")  # fmt: skip
        seconds.append(m.seconds)
        rss.append(m.peak_rss_mib)
        growth.append(bucket_bytes(client, "restic-bench") - before)
    rows.append(Row.repeated("restic", "incr 1%", size, seconds, rss, growth))
    return rows


def render(rows: list[Row], size: int, store: str) -> str:
    def sec(tool: str, step: str) -> float | None:
        return next((r.seconds for r in rows if r.tool == tool and r.step == step), None)

    lines = [
        f"Disk image {size / MiB:.0f} MiB (benchmarks/image.py); one Ceph RGW ({store}) on "
        "127.0.0.1 for both tools, each in its own bucket; hcbak encrypted (AES-256-GCM), "
        "restic encrypted.",
        "",
        "| tool | step | seconds | MiB/s | peak RSS MiB | bucket size / growth / sent |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        rss = f"{r.rss_mib:.0f}" if r.rss_mib is not None else ""
        extra = f"{r.repo_bytes / MiB:.1f} MiB" if r.repo_bytes is not None else ""
        lines.append(f"| {r.tool} | {r.step} | {r.seconds:.2f} | {r.mib_s:.0f} | {rss} | {extra} |")
    repeated = [r for r in rows if len(r.samples) > 1]
    if repeated:
        lines += ["", "Every incremental, in order (s); each row above is the median:"]
        lines += [f"- {r.tool}: " + ", ".join(f"{x:.2f}" for x in r.samples) for r in repeated]
    lines += ["", "| target | value | limit | verdict |", "|---|---:|---:|---|"]
    for step in ("full", "incr 1%"):
        ours, theirs = sec("hcbak", step), sec("restic", step)
        if ours is not None and theirs:
            ratio = ours / theirs
            verdict = "met" if ratio <= 0.5 else "missed"
            lines.append(f"| {step} <= 0.5x restic (S3) | {ratio:.2f} | 0.5 | {verdict} |")
    peaks = [r.rss_mib for r in rows if r.tool == "hcbak" and r.rss_mib is not None]
    if peaks:
        peak = max(peaks)
        verdict = "met" if peak < RSS_LIMIT else "missed"
        lines.append(f"| hcbak peak RSS < {RSS_LIMIT:.0f} MiB | {peak:.0f} | {RSS_LIMIT:.0f} | "
                     f"{verdict} |")  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="4GiB", help="image size (default 4GiB)")
    parser.add_argument("--work", default=None, help="work folder (default: a temp dir)")
    parser.add_argument("--incr-runs", type=int, default=3, help="incrementals per tool")
    parser.add_argument("--store", default="bluestore", choices=("bluestore", "memstore"),
                        help="the OSD's store (default bluestore: data on disk)")  # fmt: skip
    parser.add_argument("--rgw-script", default=str(RGW_SCRIPT), help="ceph-rgw.sh")
    parser.add_argument("--upload-parallel", type=int, default=None,
                        help="hcbak's --upload-parallel (default: hcbak's own)")  # fmt: skip
    parser.add_argument("--no-restic", action="store_true", help="hcbak only")
    args = parser.parse_args()
    size = parse_size(args.size)
    with tempfile.TemporaryDirectory(prefix="hcbak-s3bench-", dir=args.work) as tmp:
        work = Path(tmp)
        say(f"starting the Ceph RGW ({args.store})")
        gw = start_gateway(Path(args.rgw_script), work / "rgw", args.store)
        try:
            client = s3_client(gw)
            say(f"writing the {size / MiB:.0f} MiB base image")
            base = work / "base.img"
            write_image(base, size)
            say(f"hcbak: full, {args.incr_runs} incrementals into S3, repo copy")
            rows = run_hcbak(work / "hcbak", size, args.incr_runs, gw, client,
                             args.upload_parallel)  # fmt: skip
            if not args.no_restic:
                say(f"restic: full, {args.incr_runs} incrementals into S3")
                rows += run_restic(work, base, size, args.incr_runs, gw, client)
        finally:
            subprocess.run(["bash", args.rgw_script, "stop", str(work / "rgw")],
                           capture_output=True, timeout=120, check=False)  # fmt: skip
    print(render(rows, size, args.store))
    return 0


if __name__ == "__main__":
    sys.exit(main())
