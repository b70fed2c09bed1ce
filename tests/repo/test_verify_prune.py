"""verify finds damage and names the affected points; prune frees only unreferenced data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from repo_helpers import BS, PASS, disk_bytes, make_repo, read_disk, write_point

from hcbak.errors import LockedError, RepoError
from hcbak.repo import open_repo
from hcbak.repo.pack import pack_path, read_trailer
from hcbak.repo.prune import prune
from hcbak.repo.stats import repo_stats
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
    _, offset, _, _ = read_trailer(path)[0]
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
    os.truncate(path, path.stat().st_size - 10)
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
