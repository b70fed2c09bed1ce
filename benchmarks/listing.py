"""What listing points costs as a repository's points add up, in a folder and on S3.

Every backup lists its job's points and `hcbak points list` lists all of them; each
manifest header is one read (a ranged GET on S3). Since the point summary cache
(hcbak/repo/summary_cache.py) a host reads a header once. This builds a repository of
N points (one small disk each, through the repository's writers), then times `hcbak
points list --json` as a child process (wall seconds, peak RSS): with an empty state
dir (every header read), again (only the listing), and after one more point (one
header read). S3 runs on a local Ceph RGW started with ../shared/s3/ceph-rgw.sh.

    .venv/bin/python benchmarks/listing.py --points 500            # folder and S3
    .venv/bin/python benchmarks/listing.py --points 500 --no-s3    # folder only
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backup import HCBAK
from measure import run_measured
from s3 import RGW_SCRIPT, s3_client, say, start_gateway

from hcbak.config import load_config
from hcbak.repo import BlockMap, DiskImage, Point, open_repo
from hcbak.repo.storage import store_for
from hcbak.secrets import Secret

PASSPHRASE = "listing benchmark passphrase"
BLOCK = 1 << 20


def add_repo(work: Path, env: dict[str, str], name: str, where: list[str]) -> None:
    argv = [*HCBAK, "repo", "add", name, *where, "--encrypt", "--passphrase-env", "PW"]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"repo add {name}: {proc.stderr.strip()}")


def write_points(work: Path, name: str, count: int, first: int = 0) -> None:
    """`count` points of one 1 MiB disk each (the same block: only manifests grow)."""
    cfg = load_config(work / "config.yaml").repo(name)
    with open_repo(store_for(cfg), passphrase=Secret(PASSPHRASE)) as repo:
        block = b"listing" * (BLOCK // 7) + bytes(BLOCK % 7)
        bid = repo.block_id(block)
        repo.put_block(bid, block)
        for n in range(first, first + count):
            bm = BlockMap(1)
            bm.set(0, bid)
            repo.save_point(
                Point(
                    id=repo.new_point_id(),
                    job="nightly",
                    cluster="c1",
                    vm_uuid=f"uuid-vm{n % 50}",
                    vm_name=f"vm{n % 50}",
                    created=datetime.now(UTC),
                    vm={"name": f"vm{n % 50}"},
                    snapshot_uuid=f"snap-{n}",
                    disks=[DiskImage("disk-1", 0, "VIRTIO_DISK", BLOCK, BLOCK, bm, serial=n)],
                )
            )


def time_listing(work: Path, env: dict[str, str], name: str, what: str) -> None:
    m = run_measured([*HCBAK, "points", "list", "--repo", name, "--json"], env=env)
    if m.returncode not in (0, 1):
        raise RuntimeError(f"points list: {m.stderr.strip()[-400:]}")
    print(f"| {name} | {what} | {m.seconds:.2f} | {m.peak_rss_mib:.0f} |", flush=True)


def measure(work: Path, env: dict[str, str], name: str, where: list[str], count: int) -> None:
    add_repo(work, env, name, where)
    say(f"{name}: writing {count} points")
    write_points(work, name, count)
    shutil.rmtree(env["HCBAK_STATE_DIR"], ignore_errors=True)
    time_listing(work, env, name, f"{count} points, empty state dir (every header read)")
    time_listing(work, env, name, f"{count} points, again (the listing only)")
    write_points(work, name, 1, first=count)
    time_listing(work, env, name, f"{count + 1} points, one new since")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=500)
    ap.add_argument("--no-s3", action="store_true", help="only the folder repository")
    ap.add_argument("--rgw-script", default=str(RGW_SCRIPT))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hcbak-listing-"))
    env = {
        **os.environ,
        "HCBAK_CONFIG": str(work / "config.yaml"),
        "HCBAK_STATE_DIR": str(work / "state"),
        "PW": PASSPHRASE,
    }
    gw_dir = work / "rgw"
    try:
        print("| repository | listing | seconds | peak RSS MiB |\n|---|---|---:|---:|")
        measure(work, env, "folder", ["--path", str(work / "repo")], args.points)
        if not args.no_s3:
            gw = start_gateway(Path(args.rgw_script), gw_dir, "memstore")
            env.update(gw)
            os.environ.update(gw)  # this process writes the points through the library
            s3_client(gw).create_bucket(Bucket="listing")
            where = ["--s3", "listing", "--endpoint", gw["S3_ENDPOINT_URL"]]
            measure(work, env, "s3", where, args.points)
    finally:
        if gw_dir.exists():
            subprocess.run(["bash", args.rgw_script, "stop", str(gw_dir)], check=False)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
