"""`repo repair` rebuilds the index from the packs; damaged copies are set aside."""

from __future__ import annotations

from pathlib import Path

import pytest
from repo_helpers import (
    PASS,
    disk_bytes,
    make_repo,
    pack_path,
    pack_table,
    read_disk,
    write_point,
)

from hcbak.errors import IntegrityError, RepoError
from hcbak.repo import open_repo
from hcbak.repo.damaged import DAMAGED_DIR, list_records
from hcbak.repo.prune import PruneRefusedError, prune
from hcbak.repo.repair import repair
from hcbak.repo.storage import LocalStore
from hcbak.repo.verify import verify

TARGET = 1 << 20


def _repo_with_point(tmp_path: Path) -> tuple[Path, str, bytes]:
    root = make_repo(tmp_path / "r")
    data = disk_bytes(21, 8)
    with open_repo(root, passphrase=PASS, pack_target=TARGET) as repo:
        point = write_point(repo, data)
    return root, point.id, data


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and "locks" not in p.parts
    }


def _flip_first_blob(root: Path) -> tuple[Path, int]:
    pack = max(
        (p for p in (root / "packs").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
    )
    _, offset, length, _ = sorted(pack_table(pack), key=lambda e: e[1])[0]
    data = bytearray(pack.read_bytes())
    data[offset + min(length - 1, 60)] ^= 0x20
    pack.write_bytes(bytes(data))
    return pack, offset


def _verify(root: Path, percent: float = 100) -> list[str]:
    with open_repo(root, passphrase=PASS) as repo:
        return verify(repo, read_data_percent=percent).errors


def test_repair_needs_the_exclusive_lock(tmp_path: Path) -> None:
    root, _, _ = _repo_with_point(tmp_path)
    with open_repo(root, passphrase=PASS) as repo, pytest.raises(RepoError, match="exclusive"):
        repair(repo)


def test_repair_rebuilds_a_lost_index_from_the_packs_and_dry_run_writes_nothing(
    tmp_path: Path,
) -> None:
    root, pid, data = _repo_with_point(tmp_path)
    for seg in (root / "index").iterdir():
        seg.unlink()
    before = _files(root)
    with open_repo(root, passphrase=PASS, lock="exclusive") as repo:
        dry = repair(repo, dry_run=True)
    assert _files(root) == before
    assert [p.whole for p in dry.points] == [True]
    with open_repo(root, passphrase=PASS, lock="exclusive") as repo:
        report = repair(repo)
        assert [p.whole for p in report.points] == [True]
        assert report.blobs_indexed == dry.blobs_indexed > 0
        assert read_disk(repo, pid) == data
    assert _verify(root) == []


def test_a_pack_whose_table_is_damaged_is_walked_frame_by_frame_and_kept_by_prune(
    tmp_path: Path,
) -> None:
    root, pid, data = _repo_with_point(tmp_path)
    pack = max(
        (p for p in (root / "packs").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
    )
    with pack.open("r+b") as fh:  # the footer's magic: no table can be found
        fh.seek(-3, 2)
        fh.write(b"XXX")
    for seg in (root / "index").iterdir():
        seg.unlink()
    with open_repo(root, passphrase=PASS, lock="exclusive") as repo:
        report = repair(repo)
    assert report.packs_walked == [pack.name] and report.damaged_found == []
    assert [p.whole for p in report.points] == [True]
    errors = _verify(root, percent=100)
    assert len(errors) == 1 and pack.name in errors[0]  # the table, and nothing lost
    with open_repo(root, passphrase=PASS, lock="exclusive") as repo:
        pruned = prune(repo)
        assert pruned.packs_kept == [pack.name] and pruned.packs_deleted == []
        assert read_disk(repo, pid) == data
    assert pack.exists()


def test_repair_sets_a_damaged_blob_aside_and_never_deletes_a_pack(tmp_path: Path) -> None:
    root, pid, _ = _repo_with_point(tmp_path)
    pack, offset = _flip_first_blob(root)
    packs = sorted(p.name for p in (root / "packs").rglob("*") if p.is_file())
    with open_repo(root, passphrase=PASS, lock="exclusive") as repo:
        report = repair(repo)
    assert [(c.pack, c.offset) for c in report.damaged_found] == [(pack.name, offset)]
    [health] = report.points
    assert sum(len(b) for b in health.lost.values()) == 1
    assert sorted(p.name for p in (root / "packs").rglob("*") if p.is_file()) == packs
    errors = _verify(root)
    assert errors == [
        f"point {pid} ({errors[0].split('(')[1].split(')')[0]}): "
        "0 blocks not indexed, 1 blocks damaged"
    ]


def test_a_failed_read_records_the_copy_and_the_same_process_stores_the_block_again(
    tmp_path: Path,
) -> None:
    root, pid, data = _repo_with_point(tmp_path)
    _flip_first_blob(root)
    with open_repo(root, passphrase=PASS) as repo:
        with pytest.raises(IntegrityError):
            read_disk(repo, pid)
        assert len(list_records(LocalStore(root))) == 1
        again = write_point(repo, data)  # a backup of the same disk in this process
        assert read_disk(repo, again.id) == data
        assert read_disk(repo, pid) == data  # healed: the old point reads the new copy
    with open_repo(root, passphrase=PASS) as repo:  # and so does the next process
        assert read_disk(repo, pid) == data == read_disk(repo, again.id)
    assert _verify(root) == []


def test_an_unreadable_damaged_record_makes_prune_refuse_and_repair_replaces_it(
    tmp_path: Path,
) -> None:
    root, pid, _ = _repo_with_point(tmp_path)
    _flip_first_blob(root)
    with open_repo(root, passphrase=PASS) as repo, pytest.raises(IntegrityError):
        read_disk(repo, pid)
    [record] = list_records(LocalStore(root))
    (root / DAMAGED_DIR / record).write_bytes(b"garbage")
    assert any(f"damaged-copy record {record}" in e for e in _verify(root, percent=0))
    with open_repo(root, passphrase=PASS, lock="exclusive") as repo:
        with pytest.raises(PruneRefusedError, match="damaged-copy record"):
            prune(repo, dry_run=True)
        report = repair(repo)
    assert len(report.damaged_found) == 1 and record not in list_records(LocalStore(root))
    assert len(list_records(LocalStore(root))) == 1
    with open_repo(root, passphrase=PASS, lock="exclusive") as repo:
        prune(repo)  # accountable again
    assert pack_path(root, report.damaged_found[0].pack).exists()  # a live blob is in it
