"""The local index cache (hcbak/repo/index_cache.py) is derived and never trusted over
the repository: a kill during a merge leaves a usable cache, a damaged one is rebuilt,
one of another repository or of an older segment list is not used."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from repo_helpers import PASS, disk_bytes, make_repo, read_disk, write_point

from hcbak.repo import open_repo
from hcbak.repo.index import list_segments
from hcbak.repo.storage.local import LocalStore
from hcbak.repo.verify import verify

pytestmark = pytest.mark.reliability

BLOCKS = 8
DRIVER = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from repo_helpers import PASS
from hcbak.repo import index_cache, open_repo

target, seen = sys.argv[3], []

def stop(name):
    seen.append(name)
    print("phase", name, flush=True)
    if "merge" in seen and name == target:
        time.sleep(600)  # the parent kills us here

index_cache._phase = stop
with open_repo(Path(sys.argv[1]), passphrase=PASS, state_dir=Path(sys.argv[2])) as repo:
    repo.index
print("done", flush=True)
"""


def cache_dir(root: Path, state: Path) -> Path:
    config = json.loads((root / "config").read_text())
    return state / "index-cache" / config["repo_id"]


def backup(root: Path, state: Path, seed: int) -> tuple[str, bytes]:
    data = disk_bytes(seed, BLOCKS)
    with open_repo(root, passphrase=PASS, state_dir=state) as repo:
        return write_point(repo, data).id, data


def check_all(root: Path, state: Path, points: dict[str, bytes]) -> None:
    """Every point restores bit-exact through the cached index; verify is clean."""
    with open_repo(root, passphrase=PASS, state_dir=state) as repo:
        assert type(repo.index).__name__ == "CachedIndex"
        for pid, data in points.items():
            assert read_disk(repo, pid) == data
        report = verify(repo, read_data_percent=100)
        assert not report.errors, report.errors


def manifest(root: Path, state: Path) -> dict:
    return json.loads((cache_dir(root, state) / "manifest").read_text())


@pytest.fixture
def repo_with_cache(tmp_path: Path) -> tuple[Path, Path, dict[str, bytes]]:
    """A repository whose cache holds one run, plus one segment the cache has not
    seen: the next open builds a run of it and merges the two."""
    root, state = make_repo(tmp_path / "repo"), tmp_path / "state"
    points = dict([backup(root, state, 1)])
    points.update([backup(root, state, 2)])  # this open cached the first segment
    assert len(manifest(root, state)["runs"]) == 1
    return root, state, points


@pytest.mark.parametrize("phase", ["run-partial", "run-written", "manifest"])
def test_kill_during_a_merge_leaves_a_usable_cache(repo_with_cache, phase: str) -> None:
    root, state, points = repo_with_cache
    before = manifest(root, state)
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(root), str(state), phase, str(Path(__file__).parent)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    seen = []
    while True:
        line = proc.stdout.readline()
        assert line, f"driver ended early: {seen} {proc.stderr.read() if proc.stderr else ''}"
        seen.append(line.split()[-1])
        if "merge" in seen and seen[-1] == phase:
            break
    assert proc.poll() is None  # alive, stopped inside the merge
    files = {p.name for p in cache_dir(root, state).iterdir()}
    if phase == "run-partial":  # the merged run is written under a temp name only
        assert any(n.startswith(".tmp-run-") for n in files)
    else:  # the merged run is in place, the manifest still names the old runs
        assert {n for n in files if n.endswith(".run")} - set(before["runs"])
    assert manifest(root, state) == before
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    check_all(root, state, points)
    after = manifest(root, state)
    assert set(after["segments"]) == set(list_segments(LocalStore(root)))
    left = {p.name for p in cache_dir(root, state).iterdir()}
    assert left == {"manifest", "lock", *after["runs"]}  # the leftovers are collected


def test_a_damaged_run_is_detected_and_rebuilt(repo_with_cache) -> None:
    root, state, points = repo_with_cache
    check_all(root, state, points)  # merged: one run of both segments
    run = cache_dir(root, state) / manifest(root, state)["runs"][0]
    good = run.read_bytes()
    damaged = bytearray(good)
    damaged[len(good) // 2] ^= 0x40  # inside the entries: a wrong id or location
    run.write_bytes(bytes(damaged))
    check_all(root, state, points)
    runs = [cache_dir(root, state) / name for name in manifest(root, state)["runs"]]
    assert runs and all(r.read_bytes() != bytes(damaged) for r in runs)  # rebuilt
    assert not run.exists() or run.read_bytes() == good


def test_a_damaged_manifest_is_rebuilt(repo_with_cache) -> None:
    root, state, points = repo_with_cache
    (cache_dir(root, state) / "manifest").write_text('{"format": 1, "runs": ["x"]')
    check_all(root, state, points)
    assert set(manifest(root, state)["segments"]) == set(list_segments(LocalStore(root)))


def test_the_cache_of_another_repository_is_not_used(tmp_path: Path, repo_with_cache) -> None:
    root, state, points = repo_with_cache
    check_all(root, state, points)
    other = make_repo(tmp_path / "other")
    theirs = dict([backup(other, state, 7)])
    # Another repository's cache put where this one's belongs (a copied state dir).
    shutil.rmtree(cache_dir(root, state))
    shutil.copytree(cache_dir(other, state), cache_dir(root, state))
    check_all(root, state, points)
    with open_repo(root, passphrase=PASS, state_dir=state) as repo:
        their_ids = {i for i in repo.load_point(next(iter(points))).disks[0].block_map.ids()}
    with open_repo(other, passphrase=PASS, state_dir=state) as repo:
        mine = set(repo.load_point(next(iter(theirs))).disks[0].block_map.ids())
    with open_repo(root, passphrase=PASS, state_dir=state) as repo:
        assert not any(repo.index.contains(i) for i in mine - their_ids)


def test_a_cache_of_an_older_segment_list_is_not_used(repo_with_cache) -> None:
    """A segment the cache covers is gone from the repository (prune replaced it, or
    someone deleted it): the repository wins, its blocks are no longer indexed."""
    root, state, points = repo_with_cache
    check_all(root, state, points)
    segments = list_segments(LocalStore(root))
    assert len(segments) == 2
    with open_repo(root, passphrase=PASS, state_dir=state) as repo:
        first, second = (repo.load_point(pid) for pid in points)
        only_first = set(first.disks[0].block_map.ids()) - set(second.disks[0].block_map.ids())
        owner = {repo.index.lookup(i).pack for i in only_first}  # type: ignore[union-attr]
    assert only_first
    with open_repo(root, passphrase=PASS) as repo:  # no cache: which segment has them
        gone = [s for s in segments if any(e.pack in owner for e in _segment(repo, s))]
    (root / "index" / gone[0]).unlink()
    with open_repo(root, passphrase=PASS, state_dir=state) as repo:
        assert not any(repo.index.contains(i) for i in only_first)
        assert all(repo.index.contains(i) for i in second.disks[0].block_map.ids())
    assert set(manifest(root, state)["segments"]) == set(list_segments(LocalStore(root)))


def _segment(repo, seg: str) -> list:
    from hcbak.repo.index import read_segment

    return read_segment(repo.store, seg, repo.envelope)


def test_a_state_dir_that_cannot_hold_the_cache_falls_back_to_memory(tmp_path: Path) -> None:
    root, state = make_repo(tmp_path / "repo"), tmp_path / "state"
    state.mkdir()
    (state / "index-cache").write_text("not a folder")  # mkdir below it fails (as root too)
    pid, data = backup(root, state, 3)
    with open_repo(root, passphrase=PASS, state_dir=state) as repo:
        assert type(repo.index).__name__ == "CompactIndex"
        assert read_disk(repo, pid) == data


def test_a_large_build_sorts_in_buckets_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hcbak.repo import index_cache

    monkeypatch.setattr(index_cache, "SORT_IN_MEMORY", 3)  # every build spills to buckets
    root, state = make_repo(tmp_path / "repo"), tmp_path / "state"
    with open_repo(root, passphrase=PASS) as repo:  # no cache yet
        points = {
            write_point(repo, disk_bytes(s, BLOCKS)).id: disk_bytes(s, BLOCKS) for s in (4, 5)
        }
    check_all(root, state, points)
    assert len(manifest(root, state)["runs"]) == 1
    assert not [p for p in cache_dir(root, state).iterdir() if p.name.startswith(".tmp-")]
