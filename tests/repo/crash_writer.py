"""A writer process for the crash tests: stores points or prunes through the real API.

Usage:
  crash_writer.py ROOT LOG backup SEED [COUNT]
      write points of `point_data(SEED*1000+n)` until COUNT points are written or the
      process is killed; after each save_point returns, append "point <id> <data seed>"
      to LOG (fsynced).
  crash_writer.py ROOT LOG prune SEED [PHASE]
      forget the oldest third of the points (logging "forget <id>" first), then prune
      repacking every pack with a dead blob, and print "report <json>" of prune.
      With PHASE, stop there (see below).
  crash_writer.py cli PHASE HCBAK-ARGV...
      run `hcbak HCBAK-ARGV` (e.g. `repo prune main`) in this process, stopping at PHASE.
Prints "ready" once the repository is open, so the parent kills during real work.

Prune phases: every step of prune is announced as a line "phase NAME" on stdout, in
protocol order (hcbak/repo/prune.py): `packs-written` (repacked packs renamed into
place), `index-written` (the new index segments), `old-index-deleted`, `pack-deleted`
(the first old pack is gone; announced by a wrapper around the real delete, as prune
has no step there: `fsio.remove_durably` for a folder, the store's `delete` for an
object store such as S3), `done`. At PHASE the process announces it and then sleeps, so the
parent can check the phase's effect on disk and SIGKILL a process that is provably
alive there. These steps last milliseconds: too short to hit from outside by polling.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from repo_helpers import PASS, disk_bytes, write_point

from hcbak.errors import HcbakError
from hcbak.repo import open_repo

PACK_TARGET = 512 * 1024
BLOCKS_PER_POINT = 8


def log(path: Path, line: str) -> None:
    with open(path, "a") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def point_data(seed: int) -> bytes:
    """Mixed content whose second half is the first half of the point of seed+1, as
    consecutive backups share blocks: forgetting the first point of a writer leaves
    its pack partly live (a repack), forgetting a writer's only point a dead pack."""
    half = BLOCKS_PER_POINT // 2
    return disk_bytes(seed, half) + disk_bytes(seed + 1, half)


def stop_prune_at(phase: str | None) -> None:
    """Make every later `hcbak.repo.prune.prune` call announce its steps and sleep at
    `phase` (None: announce only). Patches the module attribute, which the CLI looks
    up when the command runs, and `fsio.remove_durably` for the first pack delete."""
    import hcbak.repo.prune as prune_module
    from hcbak.repo import fsio

    def announce(step: str) -> None:
        print(f"phase {step}", flush=True)
        if step == phase:
            time.sleep(600)  # the parent kills us here

    real_prune, real_remove = prune_module.prune, fsio.remove_durably
    deleted_packs = 0

    def remove_durably(path: Path) -> None:
        nonlocal deleted_packs
        real_remove(path)
        if Path(path).parent.parent.name == "packs":
            deleted_packs += 1
            if deleted_packs == 1:
                announce("pack-deleted")

    def prune(*args: object, **kwargs: object) -> object:
        store = args[0].store  # type: ignore[attr-defined]
        if store.local_root is None:  # an object store: its deletes are no files
            real_delete = store.delete

            def delete(key: str) -> None:
                nonlocal deleted_packs
                real_delete(key)
                if key.startswith("packs/"):
                    deleted_packs += 1
                    if deleted_packs == 1:
                        announce("pack-deleted")

            store.delete = delete
        return real_prune(*args, **kwargs, _hook=announce)  # type: ignore[arg-type]

    prune_module.prune = prune  # type: ignore[assignment]
    fsio.remove_durably = remove_durably


def backup(root: Path, log_path: Path, seed: int, count: int) -> None:
    with open_repo(root, passphrase=PASS, pack_target=PACK_TARGET, lock_wait=30) as repo:
        print("ready", flush=True)
        for n in range(count):
            data_seed = seed * 1000 + n
            point = write_point(repo, point_data(data_seed), vm=f"vm{data_seed % 3}")
            log(log_path, f"point {point.id} {data_seed}")


def prune_mode(root: Path, log_path: Path, phase: str | None) -> None:
    stop_prune_at(phase)
    import hcbak.repo.prune as prune_module

    with open_repo(root, passphrase=PASS, lock="exclusive", pack_target=PACK_TARGET) as repo:
        print("ready", flush=True)
        points = repo.list_points()
        doomed = [p.id for p in points[: len(points) // 3]]
        for pid in doomed:
            log(log_path, f"forget {pid}")
        repo.forget_points(doomed)
        report = prune_module.prune(repo, repack_below=1.0)
        print("report " + json.dumps(report.to_json()), flush=True)


def main() -> int:
    if sys.argv[1] == "cli":
        from hcbak.cli.main import run

        stop_prune_at(sys.argv[2])
        return run(sys.argv[3:])
    root, log_path, mode, seed = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    extra = sys.argv[5] if len(sys.argv) > 5 else None
    try:
        if mode == "backup":
            backup(root, log_path, seed, int(extra) if extra else 10**9)
        else:
            prune_mode(root, log_path, extra)
    except HcbakError as exc:
        sys.stderr.write(f"error: {exc.one_line()}\n")
        return int(exc.exit_code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
