"""Append-only folder repositories without root: the store never deletes or replaces a
committed object and stages its temp files in locks/; the config option and `repo add
--append-only`; every deleting command refuses with exit 2 and one line. (The operating
system's half, `repo harden` on a real ext4 with a backup user, is in
tests/reliability/test_append_only.py.)"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from harness import RunHcbak, assert_no_traceback
from repo_helpers import BS, PASS, disk_bytes, make_repo, write_point

from hcbak.errors import AppendOnlyError
from hcbak.repo import open_repo
from hcbak.repo.locks import EXCLUSIVE
from hcbak.repo.prune import prune
from hcbak.repo.storage import LocalStore


def test_the_store_adds_objects_but_never_deletes_or_replaces_one(tmp_path: Path) -> None:
    make_repo(tmp_path / "r")
    store = LocalStore(tmp_path / "r", append_only=True)
    assert store.put("points/abc", b"manifest", if_absent=True)
    assert not store.put("points/abc", b"other", if_absent=True)  # write-once, kept
    spool = store.spool("packs/")
    assert spool.path.parent == tmp_path / "r" / "locks"  # staged where removal is allowed
    spool.write([b"pack bytes"])
    assert store.commit_spool(spool, "packs/ab/abcd")
    for refused in (
        lambda: store.delete("points/abc"),
        lambda: store.delete("packs/ab/abcd"),
        lambda: store.put("config", b"rewritten"),
        lambda: store.put("points/abc", b"rewritten"),
    ):
        with pytest.raises(AppendOnlyError, match="append-only"):
            refused()
    assert store.get("points/abc") == b"manifest"
    assert store.get("packs/ab/abcd") == b"pack bytes"
    store.put("locks/lease", b"1", if_absent=True)  # leases come and go
    store.put("locks/lease", b"2")
    store.delete("locks/lease")
    leftovers = [p for p in (tmp_path / "r").rglob("*") if p.name.startswith(".tmp-")]
    assert leftovers == []


def test_prune_forget_and_repair_refuse_before_touching_anything(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "r")
    with open_repo(root, passphrase=PASS) as repo:
        point = write_point(repo, disk_bytes(1, 4))
    before = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    store = LocalStore(root, append_only=True)
    with open_repo(store, passphrase=PASS, lock=EXCLUSIVE) as repo:
        with pytest.raises(AppendOnlyError, match="forgetting points"):
            repo.forget_points([point.id])
        with pytest.raises(AppendOnlyError, match="prune"):
            prune(repo)
        assert prune(repo, dry_run=True).dry_run  # looking is fine
        from hcbak.repo.repair import repair

        with pytest.raises(AppendOnlyError, match="repair"):
            repair(repo)
    after = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert after == before


def _append_only_repo(run_hcbak: RunHcbak, tmp_path: Path) -> str:
    env = {"P": PASS.reveal()}
    added = run_hcbak("repo", "add", "main", "--path", str(tmp_path / "repo"), "--encrypt",
                      "--passphrase-env", "P", "--block-size", "256KiB", "--append-only",
                      env=env)  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert "append_only: true" in (tmp_path / "config.yaml").read_text()
    shown = run_hcbak("repo", "list", "--json", env=env)
    assert json.loads(shown.stdout)["repositories"][0]["append_only"] is True
    with open_repo(tmp_path / "repo", passphrase=PASS) as repo:
        return write_point(repo, disk_bytes(2, 3, BS)).id


def test_deleting_commands_refuse_with_exit_2_and_one_line(
    run_hcbak: RunHcbak, run_inproc: RunHcbak, tmp_path: Path
) -> None:
    point = _append_only_repo(run_hcbak, tmp_path)
    env = {"P": PASS.reveal(), "NEW": "another-passphrase"}
    for argv in (
        ("points", "forget", point, "--repo", "main"),
        ("repo", "forget", "main"),
        ("repo", "prune", "main"),
        ("repo", "repair", "main"),
        ("repo", "repair", "main", "--salvage"),
        ("repo", "passwd", "main", "--passphrase-env", "NEW"),
    ):
        proc = run_inproc(*argv, env=env)
        assert proc.returncode == 2, (argv, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert "is append-only" in lines[0] and f"`hcbak {argv[0]} {argv[1]}" in lines[0]
        assert "trusted host" in lines[0]
        assert_no_traceback(proc)
    for argv in (("repo", "prune", "main", "--dry-run"), ("repo", "verify", "main")):
        assert run_inproc(*argv, env=env).returncode == 0, argv
    assert (tmp_path / "repo" / "points" / point).exists()


def test_a_job_into_an_append_only_repository_may_not_forget_or_prune(
    run_inproc: RunHcbak, tmp_path: Path
) -> None:
    base = (
        "clusters:\n  c:\n    nodes: [127.0.0.1]\n    username: u\n"
        "    password_env: X\n"
        f"repositories:\n  r:\n    path: {tmp_path / 'repo'}\n    append_only: true\n"
        "jobs:\n  j:\n    cluster: c\n    repo: r\n    vms: [a]\n"
    )
    config = tmp_path / "config.yaml"
    config.write_text(base)
    os.chmod(config, 0o600)
    assert run_inproc("config", "check", env={"X": "pw"}).returncode == 0
    for extra, where in (
        ("    retention:\n      keep_last: 3\n", "jobs.j.retention"),
        ("    prune: after_run\n", "jobs.j.prune"),
    ):
        config.write_text(base + extra)
        proc = run_inproc("config", "check", env={"X": "pw"})
        assert proc.returncode == 2, proc.stderr
        assert where in proc.stderr and "append-only" in proc.stderr
    config.write_text(
        base.replace(f"    path: {tmp_path / 'repo'}\n", "    s3:\n      bucket: backups\n", 1)
    )
    proc = run_inproc("config", "check", env={"X": "pw"})
    assert proc.returncode == 2 and "append_only is for folders" in proc.stderr


def test_harden_refuses_bad_input(run_inproc: RunHcbak, tmp_path: Path) -> None:
    make_repo(tmp_path / "r")
    cases = [
        (("--backup-user", "root"), "must not be root"),
        (("--backup-user", "no-such-user-4711"), "no user named"),
        (("--lift", "--backup-user", "nobody"), "--lift takes no"),
        ((), "--backup-user"),
    ]
    if os.geteuid() != 0:
        cases = [(("--backup-user", "nobody"), "runs as root")]
    for extra, message in cases:
        proc = run_inproc("repo", "harden", str(tmp_path / "r"), *extra)
        assert proc.returncode == 2 and message in proc.stderr, (extra, proc.stderr)
    if os.geteuid() == 0:
        proc = run_inproc("repo", "harden", str(tmp_path), "--backup-user", "nobody")
        assert proc.returncode == 2 and "not an hcbak repository" in proc.stderr
