"""`hcbak repo copy` as a real subprocess: round trip restored from DST with `hcbak
restore disk`, a second copy sends nothing, filters, exit codes (2, 3, 5, 6), plain
lines off a TTY and the --json report."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from engine.copy_driver import PASS, PASS2, fill_source
from harness import RunHcbak, assert_no_traceback

from hcbak.repo import open_repo

ENV = {"SRC_PASS": PASS.reveal(), "DST_PASS": PASS2.reveal()}


@pytest.fixture
def repos(run_hcbak: RunHcbak, tmp_path: Path) -> tuple[Path, Path, dict[str, bytes]]:
    """Configured repositories `src` (4 points) and `dst` (empty), each with its own
    passphrase and keys."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    run_hcbak("repo", "add", "src", "--path", str(src), "--encrypt", "--block-size", "256KiB",
              "--passphrase-env", "SRC_PASS", env=ENV, check=True)  # fmt: skip
    run_hcbak("repo", "add", "dst", "--path", str(dst), "--encrypt", "--compression", "zstd",
              "--passphrase-env", "DST_PASS", env=ENV, check=True)  # fmt: skip
    return src, dst, fill_source(src)


def _copy(run_hcbak: RunHcbak, *args: str) -> subprocess.CompletedProcess[str]:
    proc = run_hcbak("repo", "copy", "src", "dst", *args, env=ENV)
    assert_no_traceback(proc)
    return proc


def test_copy_restores_bit_exact_from_dst_and_a_second_copy_sends_nothing(
    run_hcbak: RunHcbak, repos: tuple[Path, Path, dict[str, bytes]], tmp_path: Path
) -> None:
    _, dst, expected = repos
    first = _copy(run_hcbak)
    assert first.returncode == 0, first.stderr
    assert first.stderr.count("copied point ") == 4  # plain lines off a TTY, one per point
    assert "\x1b[" not in first.stderr
    assert "STATUS" in first.stdout and first.stdout.count("\tcopied\t") == 4
    for pid, data in expected.items():
        out = tmp_path / f"{pid}.raw"
        run_hcbak("restore", "disk", pid, "--disk", "0", "--to", str(out), "--repo", "dst",
                  env=ENV, check=True)  # fmt: skip
        assert out.read_bytes() == data
    packs_before = sorted(p.name for p in (dst / "packs").rglob("*") if p.is_file())
    second = _copy(run_hcbak, "--json")
    assert second.returncode == 0, second.stderr
    doc = json.loads(second.stdout)
    assert doc["exit_code"] == 0 and doc["status"] == "success"
    assert {p["status"] for p in doc["points"]} == {"present"}
    assert (doc["totals"]["blocks_sent"], doc["totals"]["bytes_sent"]) == (0, 0)
    assert sorted(p.name for p in (dst / "packs").rglob("*") if p.is_file()) == packs_before


def test_filters_select_points_by_job_vm_and_since(
    run_hcbak: RunHcbak, repos: tuple[Path, Path, dict[str, bytes]]
) -> None:
    def planned(*args: str) -> list[tuple[str, str]]:
        proc = _copy(run_hcbak, "--dry-run", "--json", *args)
        assert proc.returncode == 0, proc.stderr
        return [(p["vm"], p["created"][:10]) for p in json.loads(proc.stdout)["points"]]

    assert planned("--job", "weekly") == [("db", "2026-11-02")]
    assert planned("--vm", "web", "--since", "2026-11-02T00:00Z") == [
        ("web", "2026-11-02"),
        ("web", "2026-11-03"),
    ]
    assert planned("--vm", "uuid-db", "--vm", "web", "--since", "1d") == []  # all older
    assert len(planned("--since", "3650d")) == 4
    proc = _copy(run_hcbak, "--vm", "db")  # the dry runs wrote nothing; this copies one
    assert proc.returncode == 0 and proc.stderr.count("copied point ") == 1


def test_a_damaged_block_fails_its_point_with_6_and_the_others_copy_with_3(
    run_hcbak: RunHcbak, repos: tuple[Path, Path, dict[str, bytes]]
) -> None:
    src, _, _ = repos
    with open_repo(src, passphrase=PASS) as repo:
        db = repo.list_points(vm="db")[0].id
        loc = repo.locate(next(repo.load_point(db).disks[0].block_map.ids()))
        assert loc is not None
    pack = next((src / "packs").rglob(loc.pack))
    raw = bytearray(pack.read_bytes())
    raw[loc.offset + loc.length // 2] ^= 0xFF
    pack.write_bytes(bytes(raw))
    proc = _copy(run_hcbak)
    assert proc.returncode == 3, proc.stderr
    assert f"error: point {db} (db 2026-11-02" in proc.stderr and "damaged" in proc.stderr
    assert proc.stdout.count("\tcopied\t") == 3
    alone = _copy(run_hcbak, "--vm", "db")
    assert alone.returncode == 6, alone.stderr
    assert f"point {db}" in alone.stderr


def test_usage_errors_and_a_locked_destination(
    run_hcbak: RunHcbak, repos: tuple[Path, Path, dict[str, bytes]]
) -> None:
    _, dst, _ = repos
    for args, fragment in [
        (("repo", "copy", "src", "nope"), "no repository named 'nope'"),
        (("repo", "copy", "src", "src"), "two different repositories"),
        (("repo", "copy", "src", "dst", "--since", "yesterday"), "--since"),
        (("repo", "copy", "src", "dst", "--since", "2026-13-45"), "--since"),
    ]:
        proc = run_hcbak(*args, env=ENV)
        assert proc.returncode == 2 and fragment in proc.stderr, (args, proc.stderr)
        assert_no_traceback(proc)
    with open_repo(dst, passphrase=PASS2, lock="exclusive"):  # a prune of DST, say
        locked = _copy(run_hcbak)
    assert locked.returncode == 5, locked.stderr
    assert "exclusive lock" in locked.stderr


@pytest.mark.parametrize(
    ("copy_to", "fragment"),
    [
        ("[offsit]", "jobs.nightly.copy_to: no repository named 'offsit' (did you mean"),
        ("[main]", "jobs.nightly.copy_to: 'main' is the job's own repository"),
        ("[offsite, offsite]", "jobs.nightly.copy_to: 'offsite' is named twice"),
    ],
)
def test_copy_to_names_configured_repositories_other_than_the_jobs_own(
    base_config: Path, run_inproc: Any, copy_to: str, fragment: str
) -> None:
    base_config.write_text(
        base_config.read_text()
        + "  offsite: {path: /srv/offsite}\n"
        + f"jobs:\n  nightly: {{cluster: prod, repo: main, tags: [x], copy_to: {copy_to}}}\n"
    )
    proc = run_inproc("config", "check")
    assert proc.returncode == 2 and fragment in proc.stderr, proc.stderr
    assert "config.yaml:" in proc.stderr  # with the file and line


def test_a_copy_to_target_is_in_use_and_survives_a_config_save(
    base_config: Path, run_inproc: Any
) -> None:
    base_config.write_text(
        base_config.read_text()
        + "  offsite: {path: /srv/offsite}\n"
        + "jobs:\n  nightly: {cluster: prod, repo: main, tags: [x], copy_to: [offsite]}\n"
    )
    proc = run_inproc("repo", "remove", "offsite")
    assert proc.returncode == 2 and "used by job(s) nightly" in proc.stderr
    listed = json.loads(run_inproc("repo", "list", "--json", check=True).stdout)
    assert {r["name"]: r["jobs"] for r in listed["repositories"]}["offsite"] == ["nightly"]
    run_inproc("job", "edit", "nightly", "--parallel", "2", check=True)  # saves the config
    assert "copy_to:\n    - offsite" in base_config.read_text()
