"""Scale benchmark (issue 21): what a run costs as the repository grows.

Builds repositories of 0.1 M, 1 M (and 10 M) blocks through the repository's own
writers (`Repository.put_block`, `save_point`: real packs, real index segments, real
manifests; the blocks are small synthetic ones so the build stays quick) and measures,
each step in its own child process (wall time and peak RSS of that child via wait4):

- open for a backup: open with a shared lock and this host's state dir, then wait for
  the index (the first `has_block`); the child also prints the seconds it took inside
- incr 1%: a 1%-changed incremental of a 4 GiB disk (1 MiB blocks) at the repository
  layer: the parent's block map, 41 changed 1 MiB blocks stored with `put_block`, the
  new point committed; into the big repository and into an empty one
- points list: open without a lock and list every point (what `hcbak points list` does)
- verify (metadata): `repo verify` without reading data
- prune 10%: forget 10% of the points, then prune (exclusive lock)

    .venv/bin/python benchmarks/scale.py --sizes 100k,1M
    .venv/bin/python benchmarks/scale.py --sizes 100k --code /tmp/old-checkout  # "before"
    .venv/bin/python benchmarks/scale.py --sizes 10M --light 10M --fast-build 10M \
        --before /tmp/old-checkout

`--code DIR` runs the children against another checkout's `hcbak` package (the curve
before a change). Sizes run in order; `--budget` seconds stop the next build early.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import dir_size, ensure_bytecode

HERE = Path(__file__).resolve().parent
REPO_BLOCK = 1024 * 1024  # the repository's block size (disk geometry of the points)
POINTS = 100  # points the built blocks are spread over (prune forgets 10 of them)
DISK_BLOCKS = 4096  # a 4 GiB disk at 1 MiB blocks, for the incremental
CHANGED = DISK_BLOCKS // 100


def _child_env(code: Path | None, state: Path) -> dict[str, str]:
    env = dict(os.environ)
    root = str(code) if code else str(HERE.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env["HCBAK_STATE_DIR"] = str(state)
    return env


def _run(step: str, args: list[str], code: Path | None, state: Path) -> dict[str, float]:
    """One step in a child: wall seconds, CPU seconds (user + system: what the step
    costs, much less sensitive than wall time to other load on a shared machine) and
    peak RSS, all from wait4 on that child."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", step, *args]
    ensure_bytecode()
    os.sync()
    start = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            argv, env=_child_env(code, state), stdout=subprocess.PIPE, stderr=err
        )
        assert proc.stdout is not None
        out = proc.stdout.read()  # to EOF; the child is reaped by wait4, not by Popen
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"{step} failed:\n{err.read().decode(errors='replace')[-3000:]}")
    text = out.decode().strip()
    inner = json.loads(text.splitlines()[-1]) if text else {}
    return {
        "seconds": seconds,
        "cpu": usage.ru_utime + usage.ru_stime,
        "rss_mib": usage.ru_maxrss / 1024.0,
        **inner,
    }


# --- children ----------------------------------------------------------------------


def _point(repo: object, n: int, vm: int, block_map: object) -> object:
    from datetime import UTC, datetime, timedelta

    from hcbak.repo.points import DiskImage, Point

    return Point(
        id=repo.new_point_id(),  # type: ignore[attr-defined]
        job="bench",
        cluster="bench",
        vm_uuid=f"vm-{vm}",
        vm_name=f"vm{vm}",
        created=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=n),
        disks=[
            DiskImage(
                uuid=f"disk-{vm}",
                slot=0,
                type="VIRTIO_DISK",
                capacity=len(block_map) * REPO_BLOCK,  # type: ignore[arg-type]
                block_size=REPO_BLOCK,
                block_map=block_map,  # type: ignore[arg-type]
            )
        ],
    )


def child_build(root: Path, n_blocks: int) -> dict[str, float]:
    """n_blocks unique 64-byte blocks, spread over POINTS points (10 VMs x 10)."""
    from hcbak.repo import BlockMap, init_repo, open_repo

    init_repo(root, compression="lz4", block_size=REPO_BLOCK)
    salt = os.urandom(8)
    start = time.perf_counter()
    per_point = -(-n_blocks // POINTS)
    with open_repo(root, lock="exclusive") as repo:
        made = 0
        for p in range(POINTS):
            count = min(per_point, n_blocks - made)
            bm = BlockMap(max(count, 1))
            for i in range(count):
                data = salt + (made + i).to_bytes(8, "little") * 7
                block_id = repo.block_id(data)
                repo.put_block(block_id, data)
                bm.set(i, block_id)
            made += count
            repo.save_point(_point(repo, p, p % 10, bm))
    return {"build_s": time.perf_counter() - start}


def child_build_fast(root: Path, n_blocks: int) -> dict[str, float]:
    """As child_build, through the repository's lower writers (PackWriter, its frame
    and segment encoders, save_point), without put_block's threads and locks: about
    3x faster, for the 10 M size. The packs, segments and manifests are the same kind."""
    from hcbak.repo import BlockMap, init_repo, open_repo
    from hcbak.repo.codec import CODEC_LZ4, compress
    from hcbak.repo.index import SegmentEntry, write_segment
    from hcbak.repo.pack import PackWriter, frame_parts

    init_repo(root, compression="lz4", block_size=REPO_BLOCK)
    salt = os.urandom(8)
    start = time.perf_counter()
    per_point = -(-n_blocks // POINTS)
    with open_repo(root, lock="exclusive") as repo:
        made, writer, entries, packs = 0, None, [], 0
        target = repo.pack_target

        def seal() -> None:
            nonlocal writer, packs
            if writer is not None:
                pack_id = writer.finish()
                entries.extend(SegmentEntry(i, pack_id, o, n, p) for i, o, n, p in writer.entries)
                writer, packs = None, packs + 1

        def index() -> None:
            if entries:
                write_segment(repo.store, entries, repo.envelope)
                entries.clear()

        for p in range(POINTS):
            count = min(per_point, n_blocks - made)
            bm = BlockMap(max(count, 1))
            for i in range(count):
                data = salt + (made + i).to_bytes(8, "little") * 7
                block_id = repo.block_id(data)
                codec, comp = compress(data, CODEC_LZ4)
                if writer is None:
                    writer = PackWriter(repo.store)
                writer.append(block_id, frame_parts(block_id, 0, codec, len(data), [comp]), 64)
                if writer.size >= target:
                    seal()
                    if packs % 16 == 0:
                        index()
                bm.set(i, block_id)
            made += count
            seal()
            index()
            repo.save_point(_point(repo, p, p % 10, bm))
    return {"build_s": time.perf_counter() - start}


def _open_for_backup(root: Path, state: Path) -> object:
    from hcbak.repo import open_repo

    return open_repo(root, lock="shared", state_dir=state, command="hcbak job run")


def child_open(root: Path, state: Path) -> dict[str, float]:
    start = time.perf_counter()
    with _open_for_backup(root, state) as repo:  # type: ignore[attr-defined]
        repo.has_block(os.urandom(16))
        took = time.perf_counter() - start
    return {"open_s": took}


def child_incr(root: Path, state: Path) -> dict[str, float]:
    """The repository side of a 1%-changed incremental of a 4 GiB disk."""
    from hcbak.repo import BlockMap

    start = time.perf_counter()
    rnd = random.Random(7)
    with _open_for_backup(root, state) as repo:  # type: ignore[attr-defined]
        points = repo.list_points()
        bm = BlockMap(DISK_BLOCKS)
        if points:  # the parent: its first blocks stand for the unchanged part
            parent = repo.load_point(points[-1].id).disks[0].block_map
            for i in range(min(DISK_BLOCKS, len(parent))):
                bm.set(i, parent.get(i))
        for i in rnd.sample(range(DISK_BLOCKS), CHANGED):
            data = os.urandom(REPO_BLOCK)
            block_id = repo.block_id(data)
            repo.put_block(block_id, data)
            bm.set(i, block_id)
        repo.save_point(_point(repo, 10_000, 99, bm))
    return {"incr_s": time.perf_counter() - start}


def child_points(root: Path, state: Path) -> dict[str, float]:
    from hcbak.repo import open_repo

    start = time.perf_counter()
    with open_repo(root, lock=None, state_dir=state) as repo:
        n = len(repo.list_points())
    return {"list_s": time.perf_counter() - start, "points": n}


def child_verify(root: Path, state: Path) -> dict[str, float]:
    from hcbak.repo import open_repo
    from hcbak.repo.verify import verify

    start = time.perf_counter()
    with open_repo(root, lock="shared", state_dir=state) as repo:
        report = verify(repo)
    if report.errors:
        raise SystemExit("verify found errors: " + "; ".join(report.errors[:3]))
    return {"verify_s": time.perf_counter() - start}


def child_prune(root: Path, state: Path) -> dict[str, float]:
    from hcbak.repo import open_repo
    from hcbak.repo.prune import prune

    start = time.perf_counter()
    with open_repo(root, lock="exclusive", state_dir=state) as repo:
        points = repo.list_points()
        repo.forget_points([p.id for p in points[: max(1, len(points) // 10)]])
        report = prune(repo)
    return {"prune_s": time.perf_counter() - start, "packs_deleted": len(report.packs_deleted)}


CHILDREN = {
    "open": child_open,
    "incr": child_incr,
    "points": child_points,
    "verify": child_verify,
    "prune": child_prune,
}


# --- parent ------------------------------------------------------------------------


def parse_count(text: str) -> int:
    t = text.strip().lower()
    mult = {"k": 1000, "m": 1000_000}.get(t[-1], 1)
    return int(float(t[:-1] if mult > 1 else t) * mult)


def measure_size(
    n: int,
    work: Path,
    code: Path | None,
    light: bool = False,
    before: Path | None = None,
    fast: bool = False,
) -> list[tuple[str, dict[str, float]]]:
    """Every step on one repository of n blocks. `light` leaves out verify and prune
    (the sizes where they would take too long here); `before` runs the steps with
    another checkout first, on the same repository (it ignores the cache, so both see
    the same repository; its prune runs on a copy)."""
    root, state, empty = work / "repo", work / "state", work / "empty"
    for p in (root, state, empty):
        shutil.rmtree(p, ignore_errors=True)
    state.mkdir(parents=True)
    how = "build-fast" if fast else "build"
    rows = [(how, _run(how, [str(root), str(n)], code, state))]
    rows[0][1]["repo_mib"] = dir_size(str(root)) / (1 << 20)
    if before is not None:
        rows.append(("before: open for backup", _run("open", [str(root)], before, state)))
        rows.append(("before: incr 1% into it", _run("incr", [str(root)], before, state)))
        rows.append(("before: points list", _run("points", [str(root)], before, state)))
        if not light:
            rows.append(("before: verify (metadata)", _run("verify", [str(root)], before, state)))
            copy = work / "copy"
            shutil.copytree(root, copy)
            rows.append(("before: prune 10% (a copy)", _run("prune", [str(copy)], before, state)))
            shutil.rmtree(copy, ignore_errors=True)
    rows.append(
        ("open for backup (first, builds any cache)", _run("open", [str(root)], code, state))
    )
    rows.append(("open for backup", _run("open", [str(root)], code, state)))
    rows.append(("incr 1% into it", _run("incr", [str(root)], code, state)))
    rows.append(("open after that incr", _run("open", [str(root)], code, state)))
    _run("build", [str(empty), "0"], code, state)
    rows.append(("incr 1% into empty", _run("incr", [str(empty)], code, state)))
    rows.append(("points list", _run("points", [str(root)], code, state)))
    if not light:
        rows.append(("verify (metadata)", _run("verify", [str(root)], code, state)))
        rows.append(("prune 10% of points", _run("prune", [str(root)], code, state)))
        rows.append(("open after prune", _run("open", [str(root)], code, state)))
    rows[-1][1]["cache_mib"] = dir_size(str(state)) / (1 << 20)
    shutil.rmtree(empty, ignore_errors=True)
    return rows


def print_table(n: int, rows: list[tuple[str, dict[str, float]]]) -> None:
    print(f"\n{n:,} blocks\n")
    print("| step | seconds | inner s | CPU s | peak RSS MiB | note |")
    print("|---|---:|---:|---:|---:|---|")
    for name, r in rows:
        inner = next((r[k] for k in r if k.endswith("_s")), None)
        note = f"repo {r['repo_mib']:.0f} MiB" if "repo_mib" in r else ""
        note += f"state dir {r['cache_mib']:.0f} MiB" if "cache_mib" in r else ""
        inner_text = f"{inner:.2f}" if inner is not None else ""
        cpu = r.get("cpu", 0.0)
        rss = r["rss_mib"]
        print(f"| {name} | {r['seconds']:.2f} | {inner_text} | {cpu:.2f} | {rss:.0f} | {note} |")
    sys.stdout.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100k,1M", help="block counts, e.g. 100k,1M,10M")
    ap.add_argument("--code", type=Path, help="a checkout whose hcbak the children run")
    ap.add_argument("--workdir", type=Path, help="where repositories go (default: a temp dir)")
    ap.add_argument("--budget", type=float, default=900, help="seconds before no new size starts")
    ap.add_argument("--light", help="sizes (e.g. 10M) measured without verify and prune")
    ap.add_argument("--fast-build", help="sizes built with child_build_fast (e.g. 10M)")
    ap.add_argument("--before", type=Path, help="also run open/incr/list with this checkout")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        root = Path(args.rest[0])
        if args.child == "build":
            out = child_build(root, int(args.rest[1]))
        elif args.child == "build-fast":
            out = child_build_fast(root, int(args.rest[1]))
        else:
            out = CHILDREN[args.child](root, Path(os.environ["HCBAK_STATE_DIR"]))
        print(json.dumps(out))
        return
    start = time.monotonic()
    base = args.workdir or Path(tempfile.mkdtemp(prefix="hcbak-scale-"))
    base.mkdir(parents=True, exist_ok=True)
    print(f"code: {args.code or HERE.parent}; work: {base}")
    try:
        for size in [parse_count(s) for s in args.sizes.split(",")]:
            if time.monotonic() - start > args.budget:
                print(f"\n{size:,} blocks: not built (budget of {args.budget:.0f} s spent)")
                continue
            light = size in {parse_count(t) for t in (args.light or "").split(",") if t}
            fast = size in {parse_count(t) for t in (args.fast_build or "").split(",") if t}
            rows = measure_size(size, base / f"n{size}", args.code, light, args.before, fast)
            print_table(size, rows)
            shutil.rmtree(base / f"n{size}", ignore_errors=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
