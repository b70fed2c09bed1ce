"""Prune streams (hcbak/repo/usage.py): the referenced ids and the live blobs go through
external sorters. Forced to spill to bucket files, prune must do exactly what it does in
memory: the same packs deleted and repacked, the same index, every kept point whole."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from repo_helpers import BS, PASS, disk_bytes, make_repo, read_disk, write_point

from hcbak.repo import extsort, open_repo, usage
from hcbak.repo.index import list_segments, read_segment
from hcbak.repo.prune import prune
from hcbak.repo.verify import verify

BLOCKS = 8


def _disk(vm: int, generation: int) -> bytes:
    """VM `vm`'s disk after `generation` changes: one block rewritten per generation."""
    data = bytearray(disk_bytes(vm, BLOCKS))
    for g in range(1, generation + 1):
        at = (g * 3 % BLOCKS) * BS
        data[at : at + BS] = disk_bytes(100 * vm + g, 1)
    return bytes(data)


def _build(root: Path) -> tuple[list[str], dict[str, bytes]]:
    """A retired VM of one point, then three VMs of three points each; returns the ids
    to forget (the retired VM's and each VM's oldest) and the kept points."""
    make_repo(root)
    forget, kept = [], {}
    with open_repo(root, passphrase=PASS, pack_target=4 * BS) as repo:
        forget.append(write_point(repo, _disk(9, 0), vm="retired").id)
        repo.flush()  # its packs hold only its blocks: deleted whole
        for g in range(3):
            for vm in range(3):
                data = _disk(vm, g)
                pid = write_point(repo, data, vm=f"vm{vm}").id
                if g == 0:
                    forget.append(pid)
                else:
                    kept[pid] = data
    return forget, kept


def _prune(root: Path, forget: list[str], state: Path | None) -> dict[str, object]:
    with open_repo(root, passphrase=PASS, lock="exclusive", state_dir=state) as repo:
        repo.forget_points(forget)
        report = prune(repo, repack_below=1.0)  # every pack with a dead blob is repacked
    return report.to_json()


def _contents(root: Path) -> tuple[list[str], list[tuple[object, ...]]]:
    """Every pack and point by name, and every index entry (segments are sealed with
    a fresh nonce, so their names differ from run to run)."""
    names = sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and p.parts[len(root.parts)] in ("packs", "points")
    )
    with open_repo(root, passphrase=PASS, lock=None) as repo:
        entries = sorted(
            (e.id, e.pack, e.offset, e.length, e.plain_len)
            for seg in list_segments(repo.store)
            for e in read_segment(repo.store, seg, repo.envelope)
        )
    return names, entries


def _force_spills(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make every sorter spill to bucket files after 2 records; returns the record
    sizes of the sorters that did (16: block ids, LIVE.size: blob places)."""
    spills: list[int] = []
    real_spill = extsort.RecordSorter._spill

    def counted(self: extsort.RecordSorter) -> None:
        spills.append(self.size)
        real_spill(self)

    monkeypatch.setattr(extsort.RecordSorter, "_spill", counted)
    monkeypatch.setattr(usage, "REFERENCED_IN_MEMORY", 2)
    monkeypatch.setattr(usage, "LIVE_IN_MEMORY", 2)
    return spills


def test_prune_spilling_to_disk_does_what_prune_in_memory_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forget, kept = _build(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    in_memory = _prune(tmp_path / "b", forget, state=None)  # no state dir: the table index

    spills = _force_spills(monkeypatch)
    state = tmp_path / "state"
    spilled = _prune(tmp_path / "a", forget, state=state)  # the index cache, sorted runs
    assert {16, usage.LIVE.size} <= set(spills)  # both sorters went through bucket files

    assert spilled == in_memory
    assert in_memory["packs_repacked"] and in_memory["packs_deleted"]  # both paths ran
    assert _contents(tmp_path / "a") == _contents(tmp_path / "b")
    assert not list(state.rglob(".tmp-*"))  # the bucket files are gone
    with open_repo(tmp_path / "a", passphrase=PASS, state_dir=state) as repo:
        assert verify(repo, read_data_percent=100).ok
        assert sorted(repo.point_ids()) == sorted(kept)
        for pid, data in kept.items():
            assert read_disk(repo, pid) == data


def test_verify_spilling_to_disk_names_the_same_damage_as_verify_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Verify joins every point's ids with the index through the sorters too: a lost
    pack must cost the same points the same block counts either way."""
    _build(tmp_path / "r")
    packs = sorted(p for p in (tmp_path / "r" / "packs").rglob("*") if p.is_file())
    packs[len(packs) // 2].unlink()  # a pack of the second generation's blocks

    def run(state: Path | None) -> tuple[list[str], list[str]]:
        with open_repo(tmp_path / "r", passphrase=PASS, state_dir=state) as repo:
            report = verify(repo)
        return report.errors, report.affected_points

    in_memory = run(None)
    spills = _force_spills(monkeypatch)
    spilled = run(tmp_path / "state")
    assert {16, usage.LIVE.size} <= set(spills)
    assert spilled == in_memory
    errors, affected = in_memory
    assert affected and any("blocks not indexed" in e for e in errors), errors
