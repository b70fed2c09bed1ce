"""Damage, then the commands a user runs next: nothing good is deleted, damage heals.

Real `hcbak` child processes (`job run` against the simulator, then the repository
commands), real repository files damaged on disk (docs/reliability.md, section 4):
a damaged index segment makes prune refuse (it used to delete every pack the segment
listed), `repo repair` rebuilds the index from the packs, and a blob found damaged
(by verify --read-data or by a restore) is set aside so the next backup stores it
again and old and new points restore.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import pytest
from engine.helpers import Lab, MiB, lab

from hcbak.config import Retention
from hcbak.errors import IntegrityError
from hcbak.repo.pack import read_trailer
from hcbak.repo.storage import LocalStore

from .helpers import HCBAK, CliResult, Ledger, file_sha256, guest_writes

pytestmark = pytest.mark.reliability


def cli(env: dict[str, str], *argv: str) -> CliResult:
    """`hcbak ARGV` as a real child process, as a user (or cron) runs it."""
    proc = subprocess.run(
        [*HCBAK, *argv], env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def _files(root: Path, kind: str) -> dict[Path, str]:
    return {p: file_sha256(p) for p in sorted((root / kind).rglob("*")) if p.is_file()}


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x04
    path.write_bytes(bytes(data))


def _first_point(L: Lab, seed: int = 81) -> tuple[str, Ledger, str]:
    """A VM of one 3 MiB disk and its first point (a full run): disk, ledger, point."""
    vm = L.sim.create_vm("web01", [3 * MiB], tags=["nightly"])
    disk = L.sim.disk_uuids(vm)[0]
    L.sim.fill(disk, seed=seed)
    ledger = Ledger(L, [disk])
    live = ledger.live_hashes()
    assert cli(L.env, "job", "run", "nightly").code == 0
    [point] = ledger.record_new(live)
    return disk, ledger, point


def test_a_damaged_index_segment_makes_prune_refuse_and_repair_makes_every_point_restore(
    tmp_path: Path,
) -> None:
    with lab(tmp_path, retention=Retention(keep_last=1), prune="after_run") as L:
        disk, ledger, _first = _first_point(L, seed=71)
        [segment] = (L.repo_path / "index").iterdir()  # the only index segment
        _flip(segment, segment.stat().st_size // 2)
        packs = _files(L.repo_path, "packs")
        assert len(packs) >= 1

        assert cli(L.env, "repo", "verify", "main").code == 6
        for argv in (["--dry-run"], [], ["--dry-run", "--json"]):
            res = cli(L.env, "repo", "prune", "main", *argv)
            res.assert_clean()
            assert res.code == 6, (argv, res.out, res.err)
            assert segment.name in res.err and "hcbak repo repair main" in res.err
        assert _files(L.repo_path, "packs") == packs and segment.exists()

        # Unattended: a run whose retention forgets the first point and prunes after it.
        guest_writes(L, disk, random.Random(72))
        live = ledger.live_hashes()
        run = cli(L.env, "job", "run", "nightly")
        run.assert_clean()
        # The point is committed; the prune after it refuses and says why (exit 6).
        assert run.code == 6 and "prune refused" in run.err, (run.code, run.err)
        assert segment.name in run.err
        ledger.record_new(live)
        assert all(p.exists() for p in packs), "prune after_run deleted packs"

        repaired = cli(L.env, "repo", "repair", "main", "--json")
        repaired.assert_clean()
        assert repaired.code == 0, repaired.err
        doc = json.loads(repaired.out)
        assert doc["segments_removed"] >= 1 and doc["damaged_found"] == []
        assert all(p["whole"] for p in doc["points"])
        assert not segment.exists()
        assert cli(L.env, "repo", "verify", "main", "--read-data").code == 0
        assert ledger.check(allowed_missing=set(ledger.expected)) >= 1
        # Accounted for now: prune frees the forgotten point's data and nothing else.
        assert cli(L.env, "repo", "prune", "main").code == 0
        assert ledger.check(allowed_missing=set(ledger.expected)) >= 1
        assert cli(L.env, "repo", "verify", "main", "--read-data").code == 0


def test_an_incremental_after_a_segment_is_damaged_commits_a_point_that_restores_now(
    tmp_path: Path,
) -> None:
    """Unchanged blocks that only the damaged segment listed are read and stored again:
    the new point restores before anyone runs `repo repair` (it used to keep their ids,
    and restore failed on them until the index was rebuilt)."""
    from .helpers import point_sha

    with lab(tmp_path) as L:
        disk, ledger, first = _first_point(L)
        [segment] = (L.repo_path / "index").iterdir()
        _flip(segment, segment.stat().st_size // 2)
        with pytest.raises(IntegrityError, match="not in the repository index"):
            point_sha(L.repo_path, first, disk)  # the damage landed: its blocks are lost

        guest_writes(L, disk, random.Random(82), count=1)
        live = ledger.live_hashes()
        run = cli(L.env, "job", "run", "nightly", "--json")
        run.assert_clean()
        assert run.code in (0, 1), (run.code, run.err)
        [second] = ledger.record_new(live)
        [vm_report] = json.loads(run.out)["jobs"][0]["vms"]
        assert vm_report["disks"][0]["cbt_used"], vm_report  # snapDiff, not a full read
        assert point_sha(L.repo_path, second, disk) == live[disk]  # no repair needed


def _damage_one_blob(root: Path) -> Path:
    """Flip a byte inside the payload of the largest pack's first blob."""
    pack = max(
        (p for p in (root / "packs").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
    )
    _, offset, length, _ = sorted(
        read_trailer(LocalStore(pack.parents[2]), pack.name), key=lambda e: e[1]
    )[0]
    _flip(pack, offset + min(length - 1, 100))
    return pack


@pytest.mark.parametrize(
    ("found_by", "run_args"),
    [("verify", ["--full"]), ("restore", ["--full"]), ("verify", [])],
    ids=["verify-full", "restore-full", "verify-incremental"],
)
def test_a_damaged_blob_is_set_aside_and_the_next_backup_heals_old_and_new_points(
    tmp_path: Path, found_by: str, run_args: list[str]
) -> None:
    """An incremental heals too: the damaged block did not change, so snapDiff does not
    name it, and the run must read it again instead of reusing its id."""
    with lab(tmp_path) as L:
        L.save()
        _disk, ledger, old = _first_point(L)
        live = ledger.live_hashes()  # the guest does not write: the next point holds these
        damaged_pack = _damage_one_blob(L.repo_path)

        if found_by == "verify":
            found = cli(L.env, "repo", "verify", "main", "--read-data")
        else:
            found = cli(L.env, "restore", "disk", old, "--disk", "0", "--to", str(tmp_path / "o"))
        found.assert_clean()
        assert found.code == 6, (found.out, found.err)
        assert list((L.repo_path / "damaged").iterdir()), "the damage was not recorded"

        run = cli(L.env, "job", "run", "nightly", "--json", *run_args)
        run.assert_clean()
        assert run.code == 0, run.err
        [new] = ledger.record_new(live)
        assert new != old
        [job_report] = json.loads(run.out)["jobs"]
        [disk_report] = job_report["vms"][0]["disks"]
        assert (disk_report["cbt_reason"] == "snapDiff") == (not run_args), disk_report
        assert ledger.check() == 2  # the new point, and the old one healed by it
        verify = cli(L.env, "repo", "verify", "main", "--read-data", "--json")
        assert verify.code == 0, verify.out
        assert json.loads(verify.out)["damaged_copies"] == 1

        # Prune rewrites the pack without the damaged copy and drops the record.
        pruned = cli(L.env, "repo", "prune", "main", "--json")
        assert pruned.code == 0, pruned.err
        assert json.loads(pruned.out)["damaged_records_dropped"] == 1
        assert not damaged_pack.exists() and not list((L.repo_path / "damaged").iterdir())
        assert ledger.check() == 2
        assert cli(L.env, "repo", "verify", "main", "--read-data").code == 0


def test_repair_names_what_is_lost_and_salvage_makes_the_point_restorable(
    tmp_path: Path,
) -> None:
    with lab(tmp_path) as L:
        vm = L.sim.create_vm("web01", [3 * MiB], tags=["nightly"])
        disk = L.sim.disk_uuids(vm)[0]
        L.sim.fill(disk, seed=91)
        assert cli(L.env, "job", "run", "nightly").code == 0
        [point] = [p.id for p in L.points()]
        pack = _damage_one_blob(L.repo_path)
        packs = set(_files(L.repo_path, "packs"))

        dry = cli(L.env, "repo", "repair", "main", "--dry-run", "--json")
        dry.assert_clean()
        assert dry.code == 6
        assert not list((L.repo_path / "damaged").iterdir())  # a dry run writes nothing
        res = cli(L.env, "repo", "repair", "main", "--json")
        assert res.code == 6 and point[:12] in res.err
        doc = json.loads(res.out)
        assert [c["pack"] for c in doc["damaged_found"]] == [pack.name]
        [health] = doc["points"]
        assert health["lost_blocks"] == {disk: 1} and not health["whole"]
        assert set(_files(L.repo_path, "packs")) == packs  # repair never deletes a pack
        verify = cli(L.env, "repo", "verify", "main", "--json")
        assert verify.code == 6
        assert "0 blocks not indexed, 1 blocks damaged" in json.loads(verify.out)["errors"][0]

        salvaged = cli(L.env, "repo", "repair", "main", "--salvage", "--json")
        assert salvaged.code == 0, salvaged.err
        new_id = json.loads(salvaged.out)["points"][0]["salvaged_as"]
        assert [p.id for p in L.points()] == [new_id]
        out = tmp_path / "restored"
        restored = cli(L.env, "restore", "disk", new_id, "--disk", "0", "--to", str(out))
        assert restored.code == 0, restored.err
        show = json.loads(cli(L.env, "points", "show", new_id, "--json").out)
        assert show["stats"]["salvaged"]["from_point"] == point
        assert cli(L.env, "repo", "verify", "main", "--read-data").code == 0
