"""verify finds damage and names the affected points; prune frees only unreferenced data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from harness import RunHcbak, assert_no_traceback
from repo_helpers import (
    BS,
    PASS,
    adopt_golden,
    disk_bytes,
    make_repo,
    pack_path,
    pack_table,
    read_disk,
    write_point,
)

from hcbak.errors import LockedError, RepoError
from hcbak.repo import open_repo
from hcbak.repo.index import read_segment
from hcbak.repo.pack import PackWriter
from hcbak.repo.prune import PruneRefusedError, prune
from hcbak.repo.stats import repo_stats
from hcbak.repo.storage import LocalStore
from hcbak.repo.verify import verify

TARGET = 1 << 20


def two_points(root: Path) -> tuple[str, str, bytes, bytes]:
    a, b = disk_bytes(10, 8), disk_bytes(11, 8)
    with open_repo(root, passphrase=PASS, pack_target=TARGET) as repo:
        pa = write_point(repo, a, vm="a")
        pb = write_point(repo, b, vm="b")
    return pa.id, pb.id, a, b


def pack_of_point(root: Path, point_id: str) -> str:
    with open_repo(root, passphrase=PASS, lock=None) as repo:
        bm = repo.load_point(point_id).disks[0].block_map
        for bid in bm.ids():
            loc = repo.locate(bid)
            assert loc is not None
            return loc.pack
    raise AssertionError("point has no stored blocks")


def run_verify(root: Path, percent: float = 100) -> tuple[list[str], list[str]]:
    with open_repo(root, passphrase=PASS) as repo:
        report = verify(repo, read_data_percent=percent, seed=1)
    return report.errors, report.affected_points


def test_clean_repository_verifies_with_read_data(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "r")
    two_points(root)
    errors, affected = run_verify(root)
    assert errors == [] and affected == []


def test_flipped_bit_in_a_pack_is_found_by_read_data(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "r")
    pa, _, _, _ = two_points(root)
    pack = pack_of_point(root, pa)
    path = pack_path(root, pack)
    _, offset, _, _ = pack_table(path)[0]
    data = bytearray(path.read_bytes())
    data[offset + 40] ^= 0x10  # inside the first blob's payload
    path.write_bytes(bytes(data))
    errors, affected = run_verify(root)
    assert any("checksum" in e for e in errors), errors
    assert pa in affected


def test_missing_pack_is_reported_with_affected_points(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "r")
    pa, _pb, _, _ = two_points(root)
    pack = pack_of_point(root, pa)
    pack_path(root, pack).unlink()
    errors, affected = run_verify(root, percent=0)
    assert any(f"pack {pack} is missing" in e for e in errors)
    assert pa in affected


def test_truncated_pack_is_detected_by_its_trailer(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "r")
    pa, _, _, _ = two_points(root)
    path = pack_path(root, pack_of_point(root, pa))
    size = path.stat().st_size
    os.truncate(path, size - 10)
    errors, affected = run_verify(root, percent=0)
    # Only the trailer is gone: the frames describe themselves, no block is lost.
    assert any("truncated" in e for e in errors) and affected == []
    os.truncate(path, size // 2)
    errors, affected = run_verify(root, percent=0)
    assert any("truncated" in e for e in errors) and pa in affected


def test_truncated_index_is_reported_with_affected_points(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "r")
    pa, pb, _, _ = two_points(root)
    for seg in (root / "index").iterdir():
        os.truncate(seg, seg.stat().st_size // 2)
    errors, affected = run_verify(root, percent=0)
    assert any("index segment" in e for e in errors)
    assert set(affected) == {pa, pb}


def test_prune_keeps_live_points_and_frees_forgotten_data(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "r")
    pa, pb, _a, b = two_points(root)
    with open_repo(root, passphrase=PASS) as repo:
        before = repo_stats(repo)
        repo.forget_points([pa])
    with open_repo(root, passphrase=PASS, lock="exclusive", pack_target=TARGET) as repo:
        report = prune(repo)
        assert report.unused_blocks > 0
        assert read_disk(repo, pb) == b
        after = repo_stats(repo)
    assert after["size"] < before["size"]
    assert run_verify(root) == ([], [])
    with open_repo(root, passphrase=PASS, lock="exclusive") as repo:
        again = prune(repo)
    assert again.packs_deleted == [] and again.packs_repacked == []


def test_prune_dry_run_changes_nothing(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "r")
    pa, _, _, _ = two_points(root)
    with open_repo(root, passphrase=PASS) as repo:
        repo.forget_points([pa])
    files = sorted(p for p in root.rglob("*") if p.is_file() and "locks" not in p.parts)
    with open_repo(root, passphrase=PASS, lock="exclusive") as repo:
        report = prune(repo, dry_run=True)
    assert report.packs_deleted or report.packs_repacked
    assert sorted(p for p in root.rglob("*") if p.is_file() and "locks" not in p.parts) == files
    # What the dry run announces is what the real run then does.
    with open_repo(root, passphrase=PASS, lock="exclusive") as repo:
        real = prune(repo)
    assert (real.packs_deleted, real.packs_repacked) == (
        report.packs_deleted,
        report.packs_repacked,
    )
    assert real.segments_replaced == report.segments_replaced > 0


def test_prune_refuses_without_the_exclusive_lock(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "r")
    with open_repo(root, passphrase=PASS) as repo, pytest.raises(RepoError, match="exclusive"):
        prune(repo)


def test_prune_during_a_backup_fails_with_locked_error(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "r")
    with open_repo(root, passphrase=PASS) as backup:
        write_point(backup, b"x" * BS)
        with pytest.raises(LockedError) as err:
            with open_repo(root, passphrase=PASS, lock="exclusive", lock_wait=0.6):
                pass
    line = err.value.one_line()
    assert f"pid {os.getpid()}" in line and "hcbak repo unlock" in line and "shared" in line


def test_stats_report_dedup_and_compression(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "r")
    data = (b"compressible text " * BS)[: 4 * BS]
    with open_repo(root, passphrase=PASS) as repo:
        write_point(repo, data, vm="a")
        write_point(repo, data, vm="b")
        stats = repo_stats(repo)
    assert stats["points"] == 2
    assert stats["dedup_ratio"] >= 2
    assert stats["compression_ratio"] > 5


def test_stats_read_each_index_segment_once_with_the_index_cache(tmp_path: Path) -> None:
    """`repo show` used to read every segment twice with a state dir (once to find the
    damaged ones, once to sum their plain sizes)."""
    root, state = make_repo(tmp_path / "r"), tmp_path / "state"
    with open_repo(root, passphrase=PASS, pack_target=TARGET) as repo:
        write_point(repo, disk_bytes(1, 4), vm="a")
        write_point(repo, disk_bytes(2, 4), vm="b")
    with open_repo(root, passphrase=PASS, state_dir=state) as repo:
        _ = repo.index  # the cache is built (reads every segment once)
        reads: list[str] = []
        real_get = repo.store.get

        def counted(key: str) -> bytes:
            reads.append(key)
            return real_get(key)

        repo.store.get = counted  # type: ignore[method-assign]
        stats = repo_stats(repo)
    segment_reads = [k for k in reads if k.startswith("index/")]
    assert len(repo.segments) == 2
    assert sorted(segment_reads) == sorted(f"index/{s}" for s in repo.segments)
    assert stats["unique_bytes"] == 8 * BS  # random blocks: every one stored once


# --- prune accounts for every pack before it deletes anything (issue 17, item 1) -------


def _pack_files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (root / "packs").rglob("*") if p.is_file()}


def test_prune_and_its_dry_run_refuse_with_exit_6_when_an_index_segment_is_damaged(
    run_hcbak: RunHcbak, tmp_path: Path
) -> None:
    copy, env = adopt_golden(run_hcbak, tmp_path)
    segment = sorted((copy / "index").iterdir())[0]
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0x01
    segment.write_bytes(bytes(data))
    packs = _pack_files(copy)
    assert run_hcbak("repo", "verify", "g", env=env).returncode == 6
    for argv in (["--dry-run"], [], ["--json"]):
        proc = run_hcbak("repo", "prune", "g", *argv, env=env)
        assert proc.returncode == 6, (argv, proc.stdout, proc.stderr)
        assert f"index segment {segment.name} is unreadable" in proc.stderr
        assert "hcbak repo repair g" in proc.stderr
        assert_no_traceback(proc)
    assert _pack_files(copy) == packs and segment.exists()
    points = sorted(p.name for p in (copy / "points").iterdir())
    assert len(points) == 2  # retention forgot nothing either


def test_prune_keeps_a_pack_in_no_segment_whose_own_table_lists_a_referenced_blob(
    tmp_path: Path,
) -> None:
    root = make_repo(tmp_path / "r")
    _, pb, _, _ = two_points(root)
    pack = pack_of_point(root, pb)
    with open_repo(root, passphrase=PASS, lock=None) as repo:
        segments = [
            seg
            for seg in repo.segments
            if pack in {e.pack for e in read_segment(repo.store, seg, repo.envelope)}
        ]
    for seg in segments:  # the index entries of that pack are gone (not damaged: gone)
        (root / "index" / seg).unlink()
    with open_repo(root, passphrase=PASS, lock="exclusive") as repo:
        report = prune(repo)
    assert pack not in report.packs_deleted and pack_path(root, pack).exists()
    assert pack in report.packs_kept


def test_prune_keeps_a_partly_indexed_pack_whose_table_lists_an_unindexed_referenced_blob(
    tmp_path: Path,
) -> None:
    """A pack whose index entries are split over two segments, one of them deleted
    (gone, not damaged: nothing is unreadable). The pack is mostly dead by the index,
    so prune repacked the one indexed live blob and deleted the pack, and with it the
    only copies of the point's unindexed blocks. Its own table says they are needed."""
    from hcbak.repo.index import write_segment

    root = make_repo(tmp_path / "r")
    with open_repo(root, passphrase=PASS) as repo:
        for _ in range(8):  # blocks no point references, in the same pack (one flush)
            block = os.urandom(BS)
            repo.put_block(repo.block_id(block), block)
        kept_data = disk_bytes(31, 6)
        kept = write_point(repo, kept_data, vm="vm1")
        entries = [e for seg in repo.segments for e in read_segment(repo.store, seg, repo.envelope)]
        old = list(repo.segments)
    live_ids = set(kept.disks[0].block_map.ids())
    [first_live, *rest_live] = sorted((e for e in entries if e.id in live_ids), key=lambda e: e.id)
    assert len({e.pack for e in entries}) == 1 and rest_live, "one pack holds both points"
    dead = [e for e in entries if e.id not in live_ids]
    with open_repo(root, passphrase=PASS, lock=None) as repo:
        write_segment(repo.store, [*dead, first_live], repo.envelope)
        lost_segment = write_segment(repo.store, rest_live, repo.envelope)
    for seg in old:
        (root / "index" / seg).unlink()
    (root / "index" / lost_segment).unlink()  # the index no longer lists rest_live

    with open_repo(root, passphrase=PASS, lock="exclusive") as repo:
        report = prune(repo)
    [pack] = {e.pack for e in entries}
    assert pack in report.packs_kept and pack_path(root, pack).exists()
    assert pack not in report.packs_deleted and pack not in report.packs_repacked
    with open_repo(root, passphrase=PASS, lock="exclusive") as repo:
        from hcbak.repo.repair import repair

        repair(repo)
    with open_repo(root, passphrase=PASS) as repo:
        assert read_disk(repo, kept.id)[: len(kept_data)] == kept_data


def test_prune_refuses_when_a_pack_in_no_segment_has_an_unreadable_table(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "r")
    two_points(root)
    writer = PackWriter(LocalStore(root))  # a crash leftover: sealed, never indexed
    writer.append(bytes(range(16)), b"frame", 5)
    leftover = writer.finish()
    path = pack_path(root, leftover)
    os.truncate(path, path.stat().st_size - 1)
    with open_repo(root, passphrase=PASS, lock="exclusive") as repo:
        for dry_run in (True, False):
            with pytest.raises(PruneRefusedError, match=f"pack {leftover} is in no index"):
                prune(repo, dry_run=dry_run)
    assert path.exists()


def test_prune_refuses_when_a_manifest_is_unreadable(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "r")
    pa, _, _, _ = two_points(root)
    manifest = root / "points" / pa
    data = bytearray(manifest.read_bytes())
    data[-5] ^= 0xFF  # in the block maps: the header still lists, the maps do not open
    manifest.write_bytes(bytes(data))
    packs = _pack_files(root)
    with open_repo(root, passphrase=PASS, lock="exclusive") as repo:
        with pytest.raises(PruneRefusedError, match=f"point manifest {pa} is unreadable"):
            prune(repo)
    assert _pack_files(root) == packs


def test_prune_refuses_when_the_index_names_a_missing_pack_and_repair_clears_it(
    tmp_path: Path,
) -> None:
    from hcbak.repo.repair import repair

    root = make_repo(tmp_path / "r")
    pa, pb, _, b = two_points(root)
    lost = pack_of_point(root, pa)
    pack_path(root, lost).unlink()
    with open_repo(root, passphrase=PASS, lock="exclusive") as repo:
        with pytest.raises(PruneRefusedError, match=f"pack {lost} is missing"):
            prune(repo, dry_run=True)
        report = repair(repo)
        assert {p.id for p in report.points if not p.whole} >= {pa}
        prune(repo)  # accountable again: the index no longer names the missing pack
        if pb not in {p.id for p in report.points if not p.whole}:
            assert read_disk(repo, pb) == b
