"""Repository store throughput and peak memory: put_block of mixed data, 1 and 2 threads.

Each run is a child process (measured alone: wall time, peak RSS via wait4) that
creates an encrypted lz4 repository in a temp folder and stores SIZE bytes of mixed
blocks following benchmarks/image.py (40% zero blocks, never stored; 35% compressible
text; 25% random), hashing, compressing, encrypting and packing each block through
`Repository.put_block`, then `flush`. Block generation runs inside the timed loop; the
"generate only" row measures it alone so it can be subtracted.

    .venv/bin/python benchmarks/store.py                # 256 MiB, quick
    .venv/bin/python benchmarks/store.py --size 4GiB    # the documented target
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from image import HOLE, RANDOM, REGION, _Bytes, region_kinds
from measure import dir_size, parse_size, run_measured

from hcbak.repo import init_repo, open_repo
from hcbak.secrets import Secret

PASS = Secret("benchmark passphrase")


def child(size: int, threads: int, mode: str, workdir: Path) -> None:
    kinds = region_kinds(size)
    root = workdir / "repo"
    init_repo(root, passphrase=PASS, compression="lz4", block_size=REGION)
    stored = 0
    lock = threading.Lock()

    def work(t: int, repo: object | None) -> None:
        nonlocal stored
        src = _Bytes(1000 + t)
        added = 0
        for i in range(t, len(kinds), threads):
            if kinds[i] == HOLE:
                continue  # a zero block: the engine never calls put_block for it
            data = src.random(REGION) if kinds[i] == RANDOM else src.text(i, REGION)
            if repo is not None:
                added += repo.put_block(repo.block_id(data), data)  # type: ignore[attr-defined]
        with lock:
            stored += added

    with open_repo(root, passphrase=PASS) as repo:
        start = time.perf_counter()  # after open: scrypt is not part of the store rate
        target = repo if mode == "store" else None
        pool = [threading.Thread(target=work, args=(t, target)) for t in range(threads)]
        for th in pool:
            th.start()
        for th in pool:
            th.join()
        repo.flush()
        seconds = time.perf_counter() - start
        index_entries = len(repo.index)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "stored": stored,
                "repo_bytes": dir_size(str(root)),
                "blocks": index_entries,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="256MiB", help="logical bytes per run (default 256MiB)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--child", nargs=3, metavar=("SIZE", "THREADS", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        with tempfile.TemporaryDirectory(prefix="hcbak-store-") as tmp:
            child(int(args.child[0]), int(args.child[1]), args.child[2], Path(tmp))
        return
    size = parse_size(args.size)
    size -= size % REGION
    rows = []
    runs = [("generate only", 1, "generate")] + [("store", t, "store") for t in args.threads]
    for label, threads, mode in runs:
        m = run_measured([sys.executable, __file__, "--child", str(size), str(threads), mode])
        if m.returncode != 0:
            sys.exit(f"{label} with {threads} thread(s) failed:\n{m.stderr}")
        r = json.loads(m.stdout)
        rows.append(
            [
                label,
                threads,
                f"{size / (1 << 20):.0f}",
                f"{r['seconds']:.2f}",
                f"{size / (1 << 20) / r['seconds']:.0f}",
                f"{m.peak_rss_mib:.0f}",
                f"{r['repo_bytes'] / (1 << 20):.0f}",
                r["blocks"],
            ]
        )
    head = [
        "run",
        "threads",
        "logical MiB",
        "seconds",
        "MiB/s",
        "peak RSS MiB",
        "repo MiB",
        "blocks",
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    for line in [head, *rows]:
        print("  ".join(str(x).rjust(w) for x, w in zip(line, widths, strict=True)))


if __name__ == "__main__":
    main()
