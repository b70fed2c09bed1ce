"""`hcbak repo` and `hcbak points` as real subprocesses against real folders."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from harness import RunHcbak, assert_no_traceback, mounted_tmpfs
from repo_helpers import adopt_golden

SENTINEL = "sentinel-Passphrase-4711"


def test_repo_add_creates_an_encrypted_repository_without_leaking_the_passphrase(
    run_hcbak: RunHcbak, tmp_path: Path
) -> None:
    env = {"REPO_PASS": SENTINEL}
    proc = run_hcbak(
        "repo",
        "add",
        "main",
        "--path",
        str(tmp_path / "repo"),
        "--encrypt",
        "--passphrase-env",
        "REPO_PASS",
        "--block-size",
        "256KiB",
        "--compression",
        "zstd",
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    show = run_hcbak("repo", "show", "main", "--json", env=env, check=True)
    doc = json.loads(show.stdout)
    assert doc["encrypted"] and doc["block_size"] == 256 * 1024 and doc["points"] == 0
    config = (tmp_path / "config.yaml").read_text()
    repo_config = (tmp_path / "repo" / "config").read_text()
    for text in (config, repo_config, proc.stdout, proc.stderr, show.stdout):
        assert SENTINEL not in text
    wrong = run_hcbak("repo", "show", "main", env={"REPO_PASS": "wrong"})
    assert wrong.returncode == 4 and "wrong passphrase" in wrong.stderr
    assert_no_traceback(wrong)
    assert SENTINEL not in wrong.stderr


def test_repo_add_refuses_a_non_empty_foreign_folder(run_hcbak: RunHcbak, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(b"meow")
    proc = run_hcbak("repo", "add", "r", "--path", str(folder))
    assert proc.returncode == 2 and "not empty" in proc.stderr  # a bad --path: usage
    assert_no_traceback(proc)


def test_adopted_golden_repository_lists_shows_and_verifies(
    run_hcbak: RunHcbak, tmp_path: Path
) -> None:
    _, env = adopt_golden(run_hcbak, tmp_path)
    points = json.loads(
        run_hcbak("points", "list", "--job", "nightly", "--json", env=env, check=True).stdout
    )
    assert [p["vm"] for p in points["points"]] == ["web", "db"]
    web = json.loads(
        run_hcbak("points", "show", "web@latest", "--json", env=env, check=True).stdout
    )
    assert web["disks"][0]["stored_blocks"] == 3 and web["repo"] == "g"
    verify = run_hcbak("repo", "verify", "g", "--read-data", "--json", env=env)
    assert verify.returncode == 0, verify.stderr
    assert json.loads(verify.stdout)["blobs_read"] == 5
    show = json.loads(run_hcbak("repo", "show", "g", "--json", env=env, check=True).stdout)
    assert show["last_verify"]["ok"] is True and show["dedup_ratio"] > 1


def test_forget_prune_frees_space_and_verify_exits_6_naming_points_of_a_lost_pack(
    run_hcbak: RunHcbak, tmp_path: Path
) -> None:
    copy, env = adopt_golden(run_hcbak, tmp_path)
    run_hcbak("points", "forget", "db@latest", env=env, check=True)
    before = sum(p.stat().st_size for p in copy.rglob("*") if p.is_file())
    dry = json.loads(
        run_hcbak("repo", "prune", "g", "--dry-run", "--json", env=env, check=True).stdout
    )
    assert dry["dry_run"] and dry["bytes_freed"] > 0
    run_hcbak("repo", "prune", "g", env=env, check=True)
    after = sum(p.stat().st_size for p in copy.rglob("*") if p.is_file())
    assert after < before
    assert run_hcbak("repo", "verify", "g", "--read-data=50", env=env).returncode == 0
    web_pack = max(
        (p for p in (copy / "packs").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
    )
    web_pack.unlink()
    broken = run_hcbak("repo", "verify", "g", env=env)
    assert broken.returncode == 6, broken.stderr
    assert "is missing" in broken.stderr and "affected points" in broken.stderr
    assert_no_traceback(broken)


def test_repo_unlock_removes_only_stale_locks_unless_forced(
    run_hcbak: RunHcbak, tmp_path: Path
) -> None:
    run_hcbak("repo", "add", "r", "--path", str(tmp_path / "r"), check=True)
    lock = tmp_path / "r" / "locks" / "held"
    lock.write_text(
        json.dumps(
            {
                "host": os.uname().nodename,
                "pid": os.getpid(),
                "kind": "exclusive",
                "start": 0,
                "refreshed": 9e9,
                "command": "hcbak repo prune",
            }
        )
    )
    busy = run_hcbak("repo", "verify", "r")
    assert busy.returncode == 5 and "hcbak repo unlock" in busy.stderr
    run_hcbak("repo", "unlock", "r", check=True)
    assert lock.exists()
    run_hcbak("repo", "unlock", "r", "--force", check=True)
    assert not lock.exists()


def test_passwd_rewraps_the_key_only_and_remove_refuses_a_repository_in_use(
    run_hcbak: RunHcbak, tmp_path: Path
) -> None:
    env = {"PW1": "first passphrase", "PW2": "second passphrase"}
    root = tmp_path / "r"
    run_hcbak(
        "repo",
        "add",
        "main",
        "--path",
        str(root),
        "--encrypt",
        "--passphrase-env",
        "PW1",
        env=env,
        check=True,
    )
    wrapped_before = json.loads((root / "config").read_text())["encryption"]["wrapped_key"]
    run_hcbak("repo", "passwd", "main", "--passphrase-env", "PW2", env=env, check=True)
    doc = json.loads((root / "config").read_text())
    assert doc["encryption"]["wrapped_key"] != wrapped_before
    assert "passphrase_env: PW2" in (tmp_path / "config.yaml").read_text()
    from hcbak.errors import PassphraseError
    from hcbak.repo import open_repo
    from hcbak.secrets import Secret

    with open_repo(root, passphrase=Secret("second passphrase"), lock=None):
        pass
    try:
        with open_repo(root, passphrase=Secret("first passphrase"), lock=None):
            raise AssertionError("the old passphrase still opens the repository")
    except PassphraseError:
        pass
    cfg = tmp_path / "config.yaml"
    text = cfg.read_text()
    assert "clusters: {}" in text and "jobs: {}" in text
    text = text.replace(
        "clusters: {}",
        "clusters:\n  c1:\n    nodes: [10.0.0.1]\n    username: u\n    password_env: X",
    ).replace("jobs: {}", "jobs:\n  nightly:\n    cluster: c1\n    repo: main\n    vms: [web]")
    cfg.write_text(text)
    refused = run_hcbak("repo", "remove", "main", env=env)
    assert refused.returncode == 2 and "nightly" in refused.stderr, refused.stderr
    assert_no_traceback(refused)


def test_repo_forget_applies_each_jobs_retention_and_dry_run_explains(
    run_hcbak: RunHcbak, tmp_path: Path
) -> None:
    from datetime import UTC, datetime, timedelta

    from repo_helpers import make_repo, write_point

    from hcbak.repo import open_repo

    root = make_repo(tmp_path / "r", encrypted=False)
    start = datetime(2026, 11, 1, tzinfo=UTC)
    with open_repo(root) as repo:
        ids = [
            write_point(repo, bytes([n + 1]) * 4096, vm="web", created=start + timedelta(days=n)).id
            for n in range(3)
        ]
    run_hcbak("repo", "add", "main", "--path", str(root), check=True)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        cfg.read_text()
        .replace(
            "clusters: {}",
            "clusters:\n  c1:\n    nodes: [10.0.0.1]\n    username: u\n    password_env: X",
        )
        .replace(
            "jobs: {}",
            "jobs:\n  nightly:\n    cluster: c1\n    repo: main\n    vms: [web]\n"
            "    retention: {keep_last: 1}",
        )
    )
    dry = json.loads(run_hcbak("repo", "forget", "main", "--dry-run", "--json", check=True).stdout)
    plan = {p["id"]: (p["keep"], p["reasons"]) for p in dry["points"]}
    assert plan == {ids[2]: (True, ["last 1"]), ids[1]: (False, []), ids[0]: (False, [])}
    run_hcbak("repo", "forget", "main", check=True)
    left = json.loads(run_hcbak("points", "list", "--json", check=True).stdout)["points"]
    assert [p["id"] for p in left] == [ids[2]]


def _repo_with_one_point(run_hcbak: RunHcbak, tmp_path: Path, name: str) -> str:
    """A plain repository `name` in the config holding one point of VM web; its id."""
    from repo_helpers import make_repo, write_point

    from hcbak.repo import open_repo

    root = make_repo(tmp_path / name, encrypted=False)
    with open_repo(root) as repo:
        point_id = write_point(repo, name.encode() * 1024, vm="web").id
    run_hcbak("repo", "add", name, "--path", str(root), check=True)
    return point_id


def test_points_list_with_a_repository_it_cannot_open_lists_the_others_and_exits_1(
    run_hcbak: RunHcbak, tmp_path: Path
) -> None:
    from repo_helpers import make_repo

    kept = _repo_with_one_point(run_hcbak, tmp_path, "good")
    gone = make_repo(tmp_path / "gone", encrypted=False)
    run_hcbak("repo", "add", "gone", "--path", str(gone), check=True)
    shutil.rmtree(gone)
    proc = run_hcbak("points", "list", "--json")
    assert_no_traceback(proc)
    assert proc.returncode == 1, proc.stderr  # output incomplete: never exit 0
    assert [p["id"] for p in json.loads(proc.stdout)["points"]] == [kept]
    assert "warning: repository gone:" in proc.stderr


def test_a_point_prefix_under_4_characters_is_called_too_short(
    run_hcbak: RunHcbak, tmp_path: Path
) -> None:
    pid = _repo_with_one_point(run_hcbak, tmp_path, "main")
    proc = run_hcbak("points", "show", pid[:3])
    assert_no_traceback(proc)
    assert proc.returncode == 2, proc.stderr
    assert "too short: give at least 4 characters" in proc.stderr
    assert run_hcbak("points", "show", pid[:4]).returncode == 0


def test_a_config_that_cannot_be_saved_on_a_full_disk_exits_4_and_stays_as_it_was(
    run_hcbak: RunHcbak, tmp_path: Path
) -> None:
    with mounted_tmpfs(tmp_path / "small", "64k") as small:
        env = {"HCBAK_CONFIG": str(small / "config.yaml")}
        run_hcbak("repo", "add", "a", "--path", str(tmp_path / "a"), env=env, check=True)
        before = (small / "config.yaml").read_bytes()
        (small / "filler").write_bytes(b"\0" * 4096)
        try:
            while True:  # take every block left
                with open(small / "filler", "ab") as fh:
                    fh.write(b"\0" * 1024)
        except OSError:
            pass
        proc = run_hcbak("repo", "add", "b", "--path", str(tmp_path / "b"), env=env)
        after = (small / "config.yaml").read_bytes()
    assert_no_traceback(proc)
    assert proc.returncode == 4, proc.stderr
    assert "could not save the config" in proc.stderr and "No space left" in proc.stderr
    assert after == before
