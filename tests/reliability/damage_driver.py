"""A fuzz driver for "nothing lost, ever" after damage: flip one byte, run what a user
runs next, take an incremental backup, and check that the new point restores.

One case (`run_case(seed, root)`), all in process on a real folder repository:
1. two points of one VM (mixed blocks: random, text, zero, repeated), small packs;
2. one bit flipped at a random position of a random pack, index segment or manifest
   (or a whole pack deleted);
3. a random mix of what comes next: `verify --read-data`, a restore of every point
   (which sets aside what it finds damaged), `repo repair`, a prune that repacks;
4. an incremental backup exactly as the engine plans one (hcbak/engine/backup_disk.py):
   the new map starts as the previous point's, the changed blocks and the blocks at
   `repo.unchanged_to_read_again(prev_map)` are read and stored again;
5. restore every point from a fresh open: the new point must be bit-exact, an old one
   bit-exact or an IntegrityError (exit 6), never wrong bytes.

`python -m tests.reliability.damage_driver [N] [FIRST_SEED]` runs N cases and prints
every failing seed (the benchmark-style search; the test runs a fixed handful).
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hcbak.errors import HcbakError, IntegrityError
from hcbak.repo import ZERO_BLOCK, BlockMap, DiskImage, Point, Repository, init_repo, open_repo
from hcbak.repo.prune import prune
from hcbak.repo.repair import repair
from hcbak.repo.verify import verify
from hcbak.secrets import Secret

os.environ.setdefault("HCBAK_TESTONLY_WEAKEN_KDF", "1")

BS = 256 * 1024
N_BLOCKS = 16
PACK_TARGET = 4 * BS  # several packs per point: damage hits one of many
PASS = Secret("damage driver passphrase")
STEPS = ("verify", "restore", "repair", "prune", "prune")


@dataclass
class Outcome:
    """What one case did and whether the promise held."""

    seed: int
    target: str = ""
    steps: list[str] = field(default_factory=list)
    failure: str | None = None
    old_damaged: int = 0


def _block(rnd: random.Random) -> bytes:
    kind = rnd.randrange(5)
    if kind == 0:
        return rnd.randbytes(BS)
    if kind == 1:
        return (f"line {rnd.randrange(1000)} of a log\n".encode() * BS)[:BS]
    if kind == 2:
        return bytes(BS)
    if kind == 3:
        return bytes([rnd.randrange(4)]) * BS  # few values: blocks repeat across the disk
    return rnd.randbytes(64) * (BS // 64)


def _disk(rnd: random.Random) -> list[bytes]:
    return [_block(rnd) for _ in range(N_BLOCKS)]


def _point(repo: Repository, bm: BlockMap, when: datetime, serial: int) -> Point:
    point = Point(
        id=repo.new_point_id(),
        job="nightly",
        cluster="c1",
        vm_uuid="uuid-vm1",
        vm_name="vm1",
        created=when,
        snapshot_uuid=f"snap-{serial}",
        disks=[DiskImage("disk-1", 0, "VIRTIO_DISK", N_BLOCKS * BS, BS, bm, serial=serial)],
    )
    repo.save_point(point)
    return point


def _store(repo: Repository, data: bytes) -> bytes:
    """One block as the pipeline stores it (hcbak/engine/pipeline.py)."""
    if data == bytes(BS):
        return ZERO_BLOCK
    bid = repo.block_id(data)
    if not repo.has_block(bid):
        repo.put_block(bid, data)
    return bid


def full_backup(repo: Repository, disk: list[bytes], when: datetime, serial: int) -> Point:
    bm = BlockMap(N_BLOCKS)
    for i, data in enumerate(disk):
        bm.set(i, _store(repo, data))
    repo.flush()
    return _point(repo, bm, when, serial)


def incremental_backup(
    repo: Repository, prev: Point, disk: list[bytes], changed: set[int], when: datetime
) -> Point:
    """The engine's incremental: changed blocks plus those it reads again are read."""
    prev_map = prev.disks[0].block_map
    heal = set(repo.unchanged_to_read_again(prev_map))
    bm = prev_map.copy()
    for i in sorted(changed | heal):
        bm.set(i, _store(repo, disk[i]))
    repo.flush()
    return _point(repo, bm, when, (prev.disks[0].serial or 0) + 1)


def restore(repo: Repository, point_id: str) -> bytes:
    bm = repo.load_point(point_id).disks[0].block_map
    return b"".join(repo.get_block(bm.get(i)) for i in range(len(bm)))


def flip(root: Path, rnd: random.Random, old_point: str) -> str:
    """One bit of a random pack (most of the bytes), index segment or the first
    point's manifest (the newest is the incremental's base, it stays whole)."""
    kind = rnd.choice(("packs", "packs", "packs", "packs", "index", "points", "missing"))
    if kind == "missing":  # not a flip: a whole pack gone (a lost file, a bad copy)
        packs = sorted(
            (p for p in (root / "packs").rglob("*") if p.is_file()),
            key=lambda p: (p.stat().st_size, p.stat().st_mtime_ns),
        )
        gone = rnd.choice(packs)
        gone.unlink()
        return f"missing/{gone.name[:12]}"
    # Names are content hashes under a per-repository key: order by size and age so a
    # seed picks the same file each run.
    files = sorted(
        (p for p in (root / kind).rglob("*") if p.is_file()),
        key=lambda p: (p.stat().st_size, p.stat().st_mtime_ns),
    )
    if kind == "points":
        files = [p for p in files if p.name == old_point]
    path = rnd.choice(files)
    data = bytearray(path.read_bytes())
    # A third of the flips land in the pack's last 200 bytes (table and footer).
    tail = kind == "packs" and rnd.random() < 0.3
    at = rnd.randrange(max(0, len(data) - 200), len(data)) if tail else rnd.randrange(len(data))
    data[at] ^= 1 << rnd.randrange(8)
    path.write_bytes(bytes(data))
    return f"{kind}/{path.name[:12]}@{at}/{len(data)}"


def run_case(seed: int, root: Path, *, encrypted: bool = False) -> Outcome:
    rnd = random.Random(seed)
    out = Outcome(seed)
    init_repo(root, passphrase=PASS if encrypted else None, block_size=BS)
    # One block per pack too: a healed block can then rebuild its damaged pack.
    target = rnd.choice((BS, PACK_TARGET))
    pw = PASS if encrypted else None
    t0 = datetime(2026, 12, 1, tzinfo=UTC)
    disks = [_disk(rnd)]
    with open_repo(root, passphrase=pw, pack_target=target) as repo:
        p1 = full_backup(repo, disks[0], t0, 1)
        second = list(disks[0])
        for i in rnd.sample(range(N_BLOCKS), 6):
            second[i] = _block(rnd)
        disks.append(second)
        p2 = incremental_backup(repo, p1, second, set(range(N_BLOCKS)), t0 + timedelta(hours=1))
    points = [p1.id, p2.id]
    out.target = flip(root, rnd, p1.id)
    steps = [s for s in STEPS if rnd.random() < 0.5]
    rnd.shuffle(steps)
    if rnd.random() < 0.4:  # the first point forgotten: a prune has packs to repack
        steps.insert(0, "forget")
    if rnd.random() < 0.5:
        steps.append("repair")
    out.steps = list(steps)
    for step in steps:
        if step == "forget":
            with open_repo(root, passphrase=pw, lock="exclusive") as repo:
                repo.forget_points([p1.id])
            points[0] = ""
            continue
        if step in ("repair", "prune"):
            with open_repo(root, passphrase=pw, lock="exclusive", pack_target=target) as repo:
                try:
                    if step == "repair":
                        repair(repo)
                    else:
                        done = prune(repo, repack_below=1.0)
                        if out.target.split("/")[1].split("@")[0] in "".join(done.packs_repacked):
                            out.steps.append("prune-read-it")
                except HcbakError:
                    pass  # prune refuses with a damaged index: that is its promise
        else:
            with open_repo(root, passphrase=pw) as repo:
                if step == "verify":
                    verify(repo, read_data_percent=100)
                else:
                    for pid in filter(None, points):
                        try:
                            restore(repo, pid)
                        except IntegrityError:
                            pass
    # The incremental: a few blocks change; its base is the latest point.
    third = list(disks[-1])
    changed = set(rnd.sample(range(N_BLOCKS), 3))
    for i in changed:
        third[i] = _block(rnd)
    disks.append(third)
    with open_repo(root, passphrase=pw, pack_target=target) as repo:
        p3 = incremental_backup(repo, p2, third, changed, t0 + timedelta(hours=2))
    points.append(p3.id)
    with open_repo(root, passphrase=pw) as repo:
        for n, pid in enumerate(points):
            if not pid:
                continue
            want = b"".join(disks[n])
            try:
                got = restore(repo, pid)
            except IntegrityError as exc:
                if pid == p3.id and _should_heal(out):
                    out.failure = f"the new point does not restore: {exc}"
                    return out
                out.old_damaged += 1
                continue
            if got != want:
                out.failure = f"point {n + 1} restored wrong bytes"
                return out
    return out


def _should_heal(out: Outcome) -> bool:
    """Whether the new point had to restore: the damage was found before the backup
    (every copy read by verify --read-data, repair or a restore of every point). A
    damaged index segment is seen by the backup's own open, which then reads again
    every unchanged block the index cannot find. A missing pack still has its index
    entries: the backup cannot know what it lost until repair ran (verify says to).
    Damage nobody has read yet is found by the restore that reads it (exit 6) and
    healed by the next backup."""
    found = {"verify", "repair", "restore", "prune-read-it"} & set(out.steps)
    if out.target.startswith("index/"):
        return True
    if out.target.startswith("missing/"):
        return "repair" in out.steps
    return bool(found)


def main(argv: list[str]) -> int:
    n = int(argv[0]) if argv else 200
    first = int(argv[1]) if len(argv) > 1 else 0
    failures = 0
    for seed in range(first, first + n):
        tmp = Path(tempfile.mkdtemp(prefix="hcbak-dmg-"))
        try:
            res = run_case(seed, tmp / "r", encrypted=seed % 2 == 1)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if res.failure:
            failures += 1
            print(f"seed {seed}: {res.target} {res.steps}: {res.failure}", flush=True)
    print(f"{n} cases, {failures} failing")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
