"""engine/copy.py on real folder repositories: round trips restore bit-exact, a second
copy sends nothing, keys and id keys differ, damage in SRC costs only its point, and a
SIGKILL at an observed phase leaves DST consistent for the next copy to complete."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from harness import RunHcbak

from hcbak.engine.copy import COPIED, FAILED, PRESENT, CopyReport, CopySelection, copy_points
from hcbak.errors import ExitCode
from hcbak.repo import open_repo
from hcbak.repo.kdf import WEAKEN_ENV
from hcbak.repo.verify import verify
from hcbak.secrets import Secret, SecretRef

from .copy_driver import (
    PASS,
    PASS2,
    T0,
    fill_source,
    make_repo,
    read_disk,
)

DRIVER = Path(__file__).parent / "copy_driver.py"
DATA = Path(__file__).parent.parent / "data"


def _files(root: Path) -> dict[str, int]:
    """Every file under packs/, index/ and points/ with its size."""
    return {
        str(p.relative_to(root)): p.stat().st_size
        for sub in ("packs", "index", "points")
        for p in (root / sub).rglob("*")
        if p.is_file()
    }


def _copy(
    src_root: Path,
    dst_root: Path,
    src_pass: Secret | None = PASS,
    dst_pass: Secret | None = PASS2,
    selection: CopySelection | None = None,
) -> CopyReport:
    with (
        open_repo(src_root, passphrase=src_pass) as src,
        open_repo(dst_root, passphrase=dst_pass) as dst,
    ):
        return copy_points(src, dst, selection or CopySelection())


def _assert_restores(dst_root: Path, dst_pass: Secret | None, expected: dict[str, bytes]) -> None:
    with open_repo(dst_root, passphrase=dst_pass) as dst:
        assert sorted(dst.point_ids()) == sorted(expected)
        for pid, data in expected.items():
            assert read_disk(dst, pid) == data, pid
        assert verify(dst, read_data_percent=100).errors == []


@pytest.mark.parametrize(
    ("src_pass", "dst_pass"),
    [(PASS, PASS2), (None, PASS2), (PASS, None)],
    ids=["encrypted-to-other-passphrase", "plain-to-encrypted", "encrypted-to-plain"],
)
def test_round_trip_restores_bit_exact_and_a_second_copy_sends_nothing(
    tmp_path: Path, src_pass: Secret | None, dst_pass: Secret | None
) -> None:
    src_root = make_repo(tmp_path / "src", src_pass)
    dst_root = make_repo(tmp_path / "dst", dst_pass)
    expected = fill_source(src_root, src_pass)
    report = _copy(src_root, dst_root, src_pass, dst_pass)
    assert report.exit_code() == ExitCode.OK, report.to_json()
    assert not report.same_ids  # each repo has its own id key
    copied = report.points
    assert [p.status for p in copied] == [COPIED] * 4
    assert all(p.blocks_verified > 0 for p in copied)
    # The incrementals were translated through their base: only their changed blocks
    # were read from SRC, not the whole disk again.
    web = [p for p in copied if p.vm_name == "web"]
    assert web[1].blocks_read <= 2 < web[1].blocks and web[2].blocks_read <= 2
    _assert_restores(dst_root, dst_pass, expected)

    before = _files(dst_root)
    again = _copy(src_root, dst_root, src_pass, dst_pass)
    assert [p.status for p in again.points] == [PRESENT] * 4
    totals = again.totals()
    assert (totals["blocks_sent"], totals["bytes_sent"], totals["blocks_read"]) == (0, 0, 0)
    assert _files(dst_root) == before  # not one byte written to DST


def test_same_id_keys_send_only_missing_blocks_without_reading_the_others(tmp_path: Path) -> None:
    """DST made from a copy of SRC's config (same keys): ids are the same, and a block
    DST already has is never read from SRC."""
    src_root = make_repo(tmp_path / "src")
    dst_root = tmp_path / "dst"
    shutil.copytree(src_root, dst_root)  # empty: same config, same keys
    expected = fill_source(src_root)
    first_id = min(expected, key=lambda pid: pid)
    report = _copy(src_root, dst_root, PASS, PASS, CopySelection(point_ids=(first_id,)))
    assert report.same_ids and report.exit_code() == ExitCode.OK
    rest = _copy(src_root, dst_root, PASS, PASS)
    assert report.points[0].status == COPIED
    for p in rest.points:
        assert p.status == (PRESENT if p.id == first_id else COPIED)
        assert p.blocks_read == p.blocks_sent  # only blocks DST lacked were read
    _assert_restores(dst_root, PASS, expected)


def test_v1_golden_copies_into_a_new_repository_bit_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(WEAKEN_ENV)  # the golden repository has real KDF parameters
    src_root = tmp_path / "golden-v1"
    shutil.copytree(DATA / "golden-v1", src_root)
    dst_root = make_repo(tmp_path / "dst")
    golden = Secret("golden-v1 passphrase")
    report = _copy(src_root, dst_root, golden, PASS)
    assert report.exit_code() == ExitCode.OK
    with open_repo(dst_root, passphrase=PASS) as dst, open_repo(src_root, passphrase=golden) as src:
        assert dst.config.version == 3  # what init writes now
        for p in src.list_points():
            assert read_disk(dst, p.id) == read_disk(src, p.id)
            digest = hashlib.sha256(read_disk(dst, p.id)).hexdigest()
            assert (
                digest
                == {
                    "web": "76f789f9c0eeb663d02493b266b8709cefb1287fdbaea8adc27f79d87ffd0675",
                    "db": "2ad8eda4ad4ffd0c8aedcdd8f130b2a6001dd7c2a8ae8a721f2835810d06bdf2",
                }[p.vm_name]
            )


def test_selection_by_job_vm_and_since(tmp_path: Path) -> None:
    from datetime import timedelta

    src_root, dst_root = make_repo(tmp_path / "src"), make_repo(tmp_path / "dst", PASS2)
    fill_source(src_root)
    by_job = _copy(src_root, dst_root, selection=CopySelection(jobs=("weekly",)))
    assert [p.vm_name for p in by_job.points] == ["db"]
    since = _copy(
        src_root, dst_root, selection=CopySelection(vms=("web",), since=T0 + timedelta(days=1))
    )
    assert [(p.vm_name, p.created.day) for p in since.points] == [("web", 2), ("web", 3)]
    by_uuid = _copy(src_root, dst_root, selection=CopySelection(vms=("uuid-web",)))
    assert [p.status for p in by_uuid.points] == [COPIED, PRESENT, PRESENT]


def test_a_damaged_block_in_src_fails_only_its_point(tmp_path: Path) -> None:
    src_root, dst_root = make_repo(tmp_path / "src"), make_repo(tmp_path / "dst", PASS2)
    expected = fill_source(src_root)
    with open_repo(src_root, passphrase=PASS) as src:
        db = src.list_points(vm="db")[0].id
        block = next(src.load_point(db).disks[0].block_map.ids())
        loc = src.locate(block)
        assert loc is not None
    path = next((src_root / "packs").rglob(loc.pack))
    with open(path, "r+b") as fh:  # flip a byte in the middle of the blob's payload
        fh.seek(loc.offset + loc.length // 2)
        byte = fh.read(1)
        fh.seek(loc.offset + loc.length // 2)
        fh.write(bytes([byte[0] ^ 0xFF]))
    report = _copy(src_root, dst_root)
    failed = report.of(FAILED)
    assert [p.id for p in failed] == [db]
    assert failed[0].error_code == ExitCode.INTEGRITY and block.hex() in failed[0].reason
    assert len(report.of(COPIED)) == 3
    assert report.exit_code() == ExitCode.PARTIAL
    del expected[db]
    _assert_restores(dst_root, PASS2, expected)
    only_db = _copy(src_root, dst_root, selection=CopySelection(vms=("db",)))
    assert only_db.exit_code() == ExitCode.INTEGRITY


@pytest.mark.reliability
@pytest.mark.parametrize("phase", ["blocks-sent", "before-manifest"])
def test_sigkill_mid_copy_leaves_dst_consistent_and_the_next_copy_completes(
    tmp_path: Path, phase: str
) -> None:
    src_root, dst_root = make_repo(tmp_path / "src"), make_repo(tmp_path / "dst", PASS2)
    expected = fill_source(src_root)
    proc = subprocess.Popen(
        [sys.executable, str(DRIVER), str(src_root), str(dst_root), phase],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    assert proc.stdout is not None and proc.stderr is not None
    committed = []
    for line in proc.stdout:
        if line.startswith("committed "):
            committed.append(line.split()[1])
        if line.split() == ["phase", phase]:
            break
    else:
        proc.wait()
        err = proc.stderr.read()
        raise AssertionError(f"copy ended (exit {proc.returncode}) before {phase}: {err}")
    assert committed  # the phase is in the second point, after the first's commit
    with open_repo(dst_root, passphrase=PASS2, lock=None) as dst:
        in_flight = dst.list_points()
        assert [p.id for p in in_flight] == committed
    assert proc.poll() is None, "the copy died before the kill"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    proc.stdout.close()
    proc.stderr.close()

    # DST is consistent: what is committed restores, verify reads everything clean.
    with open_repo(dst_root, passphrase=PASS2) as dst:
        assert dst.point_ids() == committed
        assert read_disk(dst, committed[0]) == expected[committed[0]]
        assert verify(dst, read_data_percent=100).errors == []
    # The next copy completes; what the killed one made durable is not sent again.
    report = _copy(src_root, dst_root)
    assert report.exit_code() == ExitCode.OK
    second = next(p for p in report.points if p.status == COPIED)
    if phase == "before-manifest":
        assert second.blocks_sent == 0  # every block was durable before the kill
    _assert_restores(dst_root, PASS2, expected)


def test_job_copy_to_copies_new_points_and_a_failed_copy_is_partial_then_caught_up(
    tmp_path: Path, run_hcbak: RunHcbak
) -> None:
    """`copy_to` after `job run`: the point is restorable from the target bit-exact, an
    incremental sends only its changed block, a copy that cannot run (target locked)
    makes the job partial (3) with the reason in the report and the email, and the next
    run sends the missed point too."""
    from hcbak.config import EmailNotify, RepoConfig, SMTPConfig, save_config

    from .helpers import BLOCK, MiB, lab
    from .smtp_server import smtp_server
    from .test_cli import _schema, _validate

    with lab(tmp_path, copy_to=["offsite"]) as L, smtp_server() as inbox:
        offsite = tmp_path / "offsite"
        make_repo(offsite, PASS2)
        L.config.repositories["offsite"] = RepoConfig(
            name="offsite", path=str(offsite), passphrase=SecretRef(env="OFFSITE_PASS")
        )
        L.config.smtp = SMTPConfig(host=inbox.host, port=inbox.port, security="none", sender="h@x")
        L.config.jobs["nightly"].notify = EmailNotify(
            to=["ops@example.com"], on=["failure", "warning", "success"]
        )
        save_config(L.config)
        env = {**L.env, "OFFSITE_PASS": PASS2.reveal()}
        vm = L.sim.create_vm("web01", [4 * MiB], tags=["nightly"])
        disk = L.sim.disk_uuids(vm)[0]
        L.sim.fill(disk, seed=3)

        first = run_hcbak("job", "run", "nightly", "--json", env=env)
        assert first.returncode == 0, first.stderr
        _validate(json.loads(first.stdout), _schema())  # docs/run-report.md
        job = json.loads(first.stdout)["jobs"][0]
        point = job["vms"][0]["point_id"]
        (copy,) = job["copies"]
        assert (copy["dst"], copy["exit_code"]) == ("offsite", 0)
        assert [p["id"] for p in copy["points"] if p["status"] == COPIED] == [point]
        assert re.search(r"nightly/web01: copy: to offsite: copied point " + point, first.stderr)
        with open_repo(offsite, passphrase=PASS2) as dst:
            image = dst.load_point(point).disks[0]
            restored = b"".join(
                bytes(image.block_size) if b == bytes(16) else dst.get_block(b)
                for b in (image.block_map.get(i) for i in range(len(image.block_map)))
            )[: image.capacity]
        snap = job["vms"][0]["snapshot_uuid"]
        assert restored == L.snapshot_content(snap, disk, image.capacity)

        L.sim.write(disk, 2 * BLOCK + 7, b"changed")
        with open_repo(offsite, passphrase=PASS2, lock="exclusive"):  # a prune there
            second = run_hcbak("job", "run", "nightly", "--json", env=env)
        assert second.returncode == 3, second.stderr
        _validate(json.loads(second.stdout), _schema())
        job2 = json.loads(second.stdout)["jobs"][0]
        assert job2["vms"][0]["status"] == "ok" and job2["status"] == "partial"
        assert job2["copies"][0]["status"] == "locked" and "exclusive lock" in second.stderr

        third = run_hcbak("job", "run", "nightly", "--json", env=env)
        assert third.returncode == 0, third.stderr
        job3 = json.loads(third.stdout)["jobs"][0]
        sent = {p["id"]: p for p in job3["copies"][0]["points"]}
        assert set(sent) == {job2["vms"][0]["point_id"], job3["vms"][0]["point_id"]}
        missed = sent[job2["vms"][0]["point_id"]]
        assert (missed["status"], missed["blocks_sent"]) == (COPIED, 1)  # only the changed block
    bodies = [str(m.get_payload()) for m in inbox.messages]
    assert "copy to offsite: 1 point(s) copied" in bodies[0]
    assert "copy to offsite: 0 point(s) copied" in bodies[1] and "locked" in bodies[1]


def test_ctrl_c_before_a_manifest_commits_nothing_more_and_exits_130(tmp_path: Path) -> None:
    src_root, dst_root = make_repo(tmp_path / "src"), make_repo(tmp_path / "dst", PASS2)
    expected = fill_source(src_root)
    proc = subprocess.Popen(
        [sys.executable, str(DRIVER), str(src_root), str(dst_root), "before-manifest"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    committed = []
    for line in proc.stdout:
        if line.startswith("committed "):
            committed.append(line.split()[1])
        if line.split() == ["phase", "before-manifest"]:
            break
    assert proc.poll() is None, "the copy ended before the phase"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == ExitCode.INTERRUPTED, err
    assert "committed" not in out  # the point in flight was not committed after the stop
    with open_repo(dst_root, passphrase=PASS2) as dst:
        assert dst.point_ids() == committed
        assert verify(dst).errors == []
    assert _copy(src_root, dst_root).exit_code() == ExitCode.OK
    _assert_restores(dst_root, PASS2, expected)


def test_an_unreadable_manifest_in_src_is_a_warning_and_the_others_copy(tmp_path: Path) -> None:
    src_root, dst_root = make_repo(tmp_path / "src"), make_repo(tmp_path / "dst", PASS2)
    expected = fill_source(src_root)
    bad = sorted(expected)[0]
    manifest = src_root / "points" / bad
    raw = bytearray(manifest.read_bytes())
    raw[40] ^= 0xFF  # inside the sealed header (past its 24-byte envelope head)
    manifest.write_bytes(bytes(raw))
    report = _copy(src_root, dst_root)
    assert report.exit_code() == ExitCode.WARNINGS
    assert len(report.warnings) == 1 and bad in report.warnings[0]
    del expected[bad]
    _assert_restores(dst_root, PASS2, expected)


def test_choose_for_copy_to_sends_the_runs_points_and_catches_up_only_after_dsts_newest() -> None:
    """A job's copy_to: this run's point, plus the job's points of the same VM newer
    than DST's newest (a missed copy); older ones (forgotten by DST's retention, or
    from before copy_to was set) are not sent."""
    from datetime import timedelta

    from hcbak.engine.copy_report import choose
    from hcbak.repo.points import PointSummary

    def summary(pid: str, day: int, vm: str = "web", job: str = "nightly") -> PointSummary:
        created = T0 + timedelta(days=day)
        return PointSummary(pid, job, "c", f"uuid-{vm}", vm, created, None, 1, 1, {})

    src = [summary("p0", 0), summary("p1", 1), summary("p2", 2), summary("p3", 3),
           summary("d3", 3, vm="db"), summary("o3", 3, job="other")]  # fmt: skip
    in_dst = [summary("p1", 1)]  # p0 was forgotten in DST; p2's copy failed last run
    run = CopySelection(jobs=("nightly",), vms=("uuid-web", "uuid-db"), catch_up=True,
                        point_ids=("p3", "d3"))  # fmt: skip
    assert [s.id for s in choose(src, run, in_dst)] == ["p2", "d3", "p3"]
    first_run = choose(src, run, [])  # DST has nothing of the job: the run's points only
    assert [s.id for s in first_run] == ["d3", "p3"]
    assert [s.id for s in choose(src, CopySelection(), in_dst)] == [
        "p0",
        "p1",
        "p2",
        "d3",
        "o3",
        "p3",
    ]


def test_two_copies_into_one_dst_at_once_commit_each_point_once(tmp_path: Path) -> None:
    """Both hold DST's shared lock. Here a second copy commits the point between the
    first's block check and its manifest write: the first reports it `present` (exit 0),
    not a failure, and DST holds it once."""
    src_root, dst_root = make_repo(tmp_path / "src"), make_repo(tmp_path / "dst", PASS2)
    expected = fill_source(src_root)
    first_id = min(expected)
    only = CopySelection(point_ids=(first_id,))
    with (
        open_repo(src_root, passphrase=PASS) as src,
        open_repo(dst_root, passphrase=PASS2) as dst,
    ):
        real_save = dst.save_point
        other_reports = []

        def save_point(point: object) -> None:
            other_reports.append(_copy(src_root, dst_root, selection=only))  # wins the race
            real_save(point)  # type: ignore[arg-type]

        dst.save_point = save_point  # type: ignore[method-assign]
        report = copy_points(src, dst, only)
    assert [p.status for p in other_reports[0].points] == [COPIED]
    assert [p.status for p in report.points] == [PRESENT]
    assert report.exit_code() == ExitCode.OK
    _assert_restores(dst_root, PASS2, {first_id: expected[first_id]})
