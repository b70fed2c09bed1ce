"""A writer process for the crash tests: stores points or prunes through the real API.

Usage: crash_writer.py ROOT LOG MODE SEED [COUNT]
- MODE backup: write points with deterministic mixed data (point seed = SEED*1000+n)
  until COUNT points are written or the process is killed; after each save_point
  returns, append "point <id> <data seed>" to LOG (fsynced).
- MODE prune: forget the oldest third of the points (logging "forget <id>" first),
  then prune with aggressive repacking.
Prints "ready" once the repository is open, so the parent kills during real work.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from repo_helpers import PASS, disk_bytes, write_point

from hcbak.errors import HcbakError
from hcbak.repo import open_repo
from hcbak.repo.prune import prune

PACK_TARGET = 512 * 1024
BLOCKS_PER_POINT = 8


def log(path: Path, line: str) -> None:
    with open(path, "a") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def backup(root: Path, log_path: Path, seed: int, count: int) -> None:
    with open_repo(root, passphrase=PASS, pack_target=PACK_TARGET, lock_wait=30) as repo:
        print("ready", flush=True)
        for n in range(count):
            data_seed = seed * 1000 + n
            point = write_point(
                repo, disk_bytes(data_seed, BLOCKS_PER_POINT), vm=f"vm{data_seed % 3}"
            )
            log(log_path, f"point {point.id} {data_seed}")


def prune_mode(root: Path, log_path: Path) -> None:
    with open_repo(root, passphrase=PASS, lock="exclusive", pack_target=PACK_TARGET) as repo:
        print("ready", flush=True)
        points = repo.list_points()
        doomed = [p.id for p in points[: len(points) // 3]]
        for pid in doomed:
            log(log_path, f"forget {pid}")
        repo.forget_points(doomed)
        prune(repo, repack_below=0.95, _hook=lambda _step: time.sleep(0.05))


def main() -> int:
    root, log_path, mode, seed = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    count = int(sys.argv[5]) if len(sys.argv) > 5 else 10**9
    try:
        if mode == "backup":
            backup(root, log_path, seed, count)
        else:
            prune_mode(root, log_path)
    except HcbakError as exc:
        sys.stderr.write(f"error: {exc.one_line()}\n")
        return int(exc.exit_code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
