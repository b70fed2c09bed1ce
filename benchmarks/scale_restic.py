"""restic at scale (issue 21): scale.py's steps on restic repositories of growing blob counts.

Builds a restic repository of n blobs the fastest way found here: `--snapshots` (10)
backups of one folder of n/10 unique 64-byte files, 1000 a subfolder, rewritten in
place before each backup. (100 snapshots, as scale.py spreads its blocks over 100
points, cost 84 restic CPU s at 0.1 M blobs instead of 15: every restic run pays its
key derivation, ~0.4 CPU s, and loads the index; prune forgets 10% of them either way.) A file under
restic's 512 KiB minimum chunk is one data blob, each folder one tree blob per snapshot.
Then measures restic's counterparts of scale.py's steps, each a child process (wall s,
CPU s and peak RSS from wait4, `measure.run_measured`):

- incr 1%: a 1%-changed 4 GiB disk image (`image.py`: sparse, 60% written) backed up
  after its full backup, into the big repository and into an empty one (holding only
  that disk's full backup). restic reads and chunks the whole image, no snapDiff
- backup, nothing changed: the same image again (restic skips it by mtime/inode): what
  opening the repository for a backup costs, its whole index loaded
- snapshots (points list); check (metadata, no --read-data); forget of the oldest 10%
  of the snapshots, then prune

    .venv/bin/python benchmarks/scale_restic.py --sizes 100k,1M
    .venv/bin/python benchmarks/scale_restic.py --sizes 100k,1M,3M --budget 2400

The password is in RESTIC_PASSWORD (never on argv); restic's cache is a folder inside
the bench dir (RESTIC_CACHE_DIR, kept warm from the build on, as on a backup host;
`check` makes its own temporary one under TMPDIR, also inside the bench dir). A size
whose build would end after `--budget` seconds from the start, at the last size's build
rate (blobs per second of wall time, restic's fixed costs included), is skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import Measured, MiB, dir_size, parse_size, run_measured
from scale import parse_count

FILES_PER_FOLDER = 1000
Step = tuple[str, Measured, str]


def restic_env(work: Path) -> dict[str, str]:
    (work / "tmp").mkdir(parents=True, exist_ok=True)
    return dict(
        os.environ,
        RESTIC_PASSWORD="bench",
        RESTIC_REPOSITORY=str(work / "repo"),
        RESTIC_CACHE_DIR=str(work / "cache"),
        TMPDIR=str(work / "tmp"),
    )


def restic(args: list[str], env: dict[str, str]) -> Measured:
    m = run_measured(["restic", *args], env=env)
    if m.returncode != 0:
        raise SystemExit(f"restic {args[0]} failed ({m.returncode}): {m.stderr.strip()[-800:]}")
    return m


def write_files(data: Path, first: int, count: int, salt: bytes) -> None:
    """count unique 64-byte files, the same paths at every snapshot. Overwritten in
    place, not truncated: a truncating rewrite costs ~50x more here (ext4)."""
    for i in range(count):
        folder = data / f"d{i // FILES_PER_FOLDER:05d}"
        if i % FILES_PER_FOLDER == 0:
            folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / f"f{i % FILES_PER_FOLDER:04d}", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.write(fd, salt + (first + i).to_bytes(8) * 7)
        finally:
            os.close(fd)


def build(work: Path, n: int, snapshots: int, env: dict[str, str]) -> Step:
    """n data blobs over `snapshots` backups. The row: wall s of the whole build (file
    writing included), CPU s and peak RSS of the restic children summed / at most."""
    start = time.perf_counter()
    restic(["-q", "init"], env)
    data, salt = work / "data", os.urandom(8)
    per, made, cpu, rss = -(-n // snapshots), 0, 0.0, 0.0
    for _ in range(snapshots):
        count = min(per, n - made)
        if count <= 0:
            break
        if count != per:
            shutil.rmtree(data, ignore_errors=True)
        write_files(data, made, count, salt)
        m = restic(["-q", "backup", str(data)], env)
        cpu, rss, made = cpu + m.cpu_seconds, max(rss, m.peak_rss_mib), made + count
    shutil.rmtree(data, ignore_errors=True)
    wall = time.perf_counter() - start
    kinds = count_blobs(env)
    note = (
        f"{kinds['data']:,} data + {kinds['tree']:,} tree blobs, "
        f"{dir_size(env['RESTIC_REPOSITORY']) / MiB:.0f} MiB, {n / wall:,.0f} blobs/s"
    )
    return ("build", Measured(wall, rss, 0, "", "", cpu), note)


def count_blobs(env: dict[str, str]) -> dict[str, int]:
    """Blobs in the index by type, streamed: this process must stay small (see floor)."""
    kinds = {"data": 0, "tree": 0}
    with subprocess.Popen(["restic", "list", "blobs"], env=env, stdout=subprocess.PIPE) as p:
        assert p.stdout is not None
        for line in p.stdout:
            kinds[line.split()[0].decode()] += 1
    if p.returncode != 0:
        raise SystemExit(f"restic list blobs failed ({p.returncode})")
    return kinds


def floor() -> Step:
    """What every child's peak RSS here includes: wait4's ru_maxrss of a child starts
    at this (parent) process's own peak RSS (the kernel keeps the high-water mark of the
    memory the child had before exec), so the image is written by a child process and
    the blob list is streamed. A child that stays below it reads as the floor."""
    return ("floor: /bin/true from this process", run_measured(["true"]), "")


def disk_backup(disk: Path, image: Path, env: dict[str, str]) -> Measured:
    """Back up disk/disk.img, a hard link to `image` (a new inode: restic rereads it)."""
    link = disk / "disk.img"
    tmp = disk / "disk.img.new"
    os.link(image, tmp)
    os.replace(tmp, link)
    return restic(["-q", "backup", str(disk)], env)


def measure_size(work: Path, n: int, snapshots: int, images: Path) -> list[Step]:
    env = restic_env(work)
    disk = work / "disk"
    disk.mkdir()
    rows = [build(work, n, snapshots, env)]
    rows.append(("full of the disk (setup)", disk_backup(disk, images / "base.img", env), ""))
    rows.append(("incr 1% into it", disk_backup(disk, images / "changed.img", env), ""))
    rows.append(("backup, nothing changed", restic(["-q", "backup", str(disk)], env), ""))
    rows.append(("snapshots (points list)", restic(["snapshots"], env), ""))
    rows.append(("check (metadata)", restic(["check"], env), "own temporary cache"))
    listed = json.loads(restic(["snapshots", "--json"], env).stdout)
    oldest = [s["id"] for s in sorted(listed, key=lambda s: s["time"])]
    forget = oldest[: max(1, len(oldest) // 10)]
    rows.append(("forget 10% of snapshots", restic(["-q", "forget", *forget], env), ""))
    before = dir_size(env["RESTIC_REPOSITORY"])
    m = restic(["-q", "prune"], env)
    freed = (before - dir_size(env["RESTIC_REPOSITORY"])) / MiB
    rows.append(("prune", m, f"{len(forget)} of {len(oldest)} snapshots, {freed:.0f} MiB freed"))
    rows.append(floor())
    return rows


def measure_empty(work: Path, images: Path) -> list[Step]:
    """The incremental into a repository holding only that disk's full backup."""
    env = restic_env(work)
    disk = work / "disk"
    disk.mkdir()
    restic(["-q", "init"], env)
    full = disk_backup(disk, images / "base.img", env)
    incr = disk_backup(disk, images / "changed.img", env)
    return [("full of the disk (setup)", full, ""), ("incr 1% into empty", incr, ""), floor()]


def print_table(title: str, rows: list[Step]) -> None:
    print(f"\n{title}\n")
    print("| step | wall s | CPU s | peak RSS MiB | note |")
    print("|---|---:|---:|---:|---|")
    for step, m, note in rows:
        print(f"| {step} | {m.seconds:.2f} | {m.cpu_seconds:.2f} | {m.peak_rss_mib:.0f} | {note} |")
    sys.stdout.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100k,1M", help="data blob counts, e.g. 100k,1M,3M")
    ap.add_argument("--budget", type=float, default=1200, help="seconds the whole run may take")
    ap.add_argument("--snapshots", type=int, default=10, help="backups the blobs are spread over")
    ap.add_argument("--disk", type=parse_size, default=4 << 30, help="disk image size (4GiB)")
    ap.add_argument("--write-images", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.write_images:  # in a child, so that this process's RSS stays small
        from image import changed_copy, write_image

        write_image(args.write_images / "base.img", args.disk)
        changed_copy(args.write_images / "base.img", args.write_images / "changed.img", args.disk)
        return
    start = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="restic-scale-", dir="/tmp"))
    version = subprocess.run(["restic", "version"], capture_output=True, text=True).stdout
    print(f"work: {base}; {version.strip()}")
    try:
        images = base / "images"
        images.mkdir()
        me = [sys.executable, __file__, "--disk", str(args.disk), "--write-images", str(images)]
        subprocess.run(me, check=True)
        empty = measure_empty(base / "empty", images)
        print_table(f"empty repository ({args.disk / MiB:.0f} MiB disk)", empty)
        shutil.rmtree(base / "empty")
        rate = None
        for n in [parse_count(s) for s in args.sizes.split(",")]:
            spent = time.monotonic() - start
            if rate is not None and spent + n / rate > args.budget:
                print(f"\n{n:,} blobs: not built ({spent:.0f} s spent + {n / rate:.0f} s to build")
                print(f"at {rate:,.0f} blobs/s > budget of {args.budget:.0f} s)")
                continue
            rows = measure_size(base / f"n{n}", n, args.snapshots, images)
            rate = n / rows[0][1].seconds
            print_table(f"{n:,} data blobs", rows)
            shutil.rmtree(base / f"n{n}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
