"""`restore_disk` and `hcbak restore disk`: real repositories, real files, real qemu-img."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import RunHcbak, assert_no_traceback, mounted_tmpfs

from hcbak.config import Config, RepoConfig, save_config
from hcbak.engine.restore_disk import restore_disk, select_disk
from hcbak.errors import NotFoundError, UsageError
from hcbak.repo import Point, Repository, init_repo, open_repo
from hcbak.secrets import Secret, SecretRef

from .helpers import MiB, SourceDisk, make_point, write_source

QEMU_IMG = shutil.which("qemu-img")
needs_qemu = pytest.mark.skipif(
    QEMU_IMG is None, reason="qemu-img not installed (apt-get install qemu-utils)"
)
CAPACITY = 8 * MiB + 64 * 1024  # not a multiple of any block size: the tail matters


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return write_source(tmp_path / "source.raw", CAPACITY, seed=1)


def _repo(tmp_path: Path, block_size: int = MiB) -> Path:
    path = tmp_path / f"repo-{block_size}"
    init_repo(path, compression="lz4", block_size=block_size, passphrase=None)
    return path


@pytest.fixture
def stored(tmp_path: Path, source: Path) -> Iterator[tuple[Repository, Point]]:
    path = _repo(tmp_path)
    with open_repo(path, lock="shared") as repo:
        point = make_point(repo, [SourceDisk(source, "disk-aaaa-1111", 0)])
        yield repo, point


def qemu_compare(raw: Path, image: Path, fmt: str) -> None:
    assert QEMU_IMG is not None
    proc = subprocess.run(
        [QEMU_IMG, "compare", "-f", "raw", "-F", fmt, str(raw), str(image)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "identical" in proc.stdout


def test_raw_restore_is_byte_identical_and_sparse(
    tmp_path: Path, source: Path, stored: tuple[Repository, Point]
) -> None:
    repo, point = stored
    out = tmp_path / "out.raw"
    result = restore_disk(repo, point, "0", out, "raw")
    assert out.read_bytes() == source.read_bytes()
    st = out.stat()
    assert st.st_size == CAPACITY
    # Only the 3 blocks holding data (MiB 0, MiB 4, the tail) are allocated.
    assert st.st_blocks * 512 <= 3 * MiB, st.st_blocks
    # Data bytes: the 1 MiB blocks at MiB 0 and 4, and the tail block's 64 KiB only.
    assert result.bytes_written == 2 * MiB + 64 * 1024


@needs_qemu
@pytest.mark.parametrize("block_size", [256 * 1024, MiB, 4 * MiB])
def test_qcow2_restore_passes_qemu_check_and_compares_identical(
    tmp_path: Path, source: Path, block_size: int
) -> None:
    path = _repo(tmp_path, block_size)
    with open_repo(path, lock="shared") as repo:
        point = make_point(repo, [SourceDisk(source, "disk-aaaa-1111", 0)])
        out = tmp_path / "out.qcow2"
        restore_disk(repo, point, "disk-aaaa", out, "qcow2")
    assert QEMU_IMG is not None
    check = subprocess.run([QEMU_IMG, "check", str(out)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    qemu_compare(source, out, "qcow2")


@needs_qemu
@pytest.mark.parametrize("fmt", ["vmdk", "vhdx"])
def test_vmdk_and_vhdx_restore_compare_identical(
    tmp_path: Path, source: Path, stored: tuple[Repository, Point], fmt: str
) -> None:
    repo, point = stored
    out = tmp_path / f"out.{fmt}"
    restore_disk(repo, point, "0", out, fmt)
    qemu_compare(source, out, fmt)
    assert not list(tmp_path.glob(".out.*")), "temp raw file left behind"


def test_converted_formats_say_clearly_when_qemu_img_is_missing(
    tmp_path: Path, stored: tuple[Repository, Point], monkeypatch: pytest.MonkeyPatch
) -> None:
    # qemu-img is installed here; hide it from PATH to see the message users get without it.
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    repo, point = stored
    with pytest.raises(UsageError, match="needs qemu-img") as info:
        restore_disk(repo, point, "0", tmp_path / "out.vmdk", "vmdk")
    assert "qemu-utils" in (info.value.hint or "")
    assert not (tmp_path / "out.vmdk").exists()


def test_existing_destination_is_not_overwritten(
    tmp_path: Path, stored: tuple[Repository, Point]
) -> None:
    repo, point = stored
    out = tmp_path / "precious.raw"
    out.write_bytes(b"keep me")
    with pytest.raises(UsageError, match="already exists"):
        restore_disk(repo, point, "0", out, "raw")
    assert out.read_bytes() == b"keep me"


def test_unknown_disk_names_the_disks_of_the_point(stored: tuple[Repository, Point]) -> None:
    _, point = stored
    with pytest.raises(NotFoundError) as info:
        select_disk(point, "7")
    assert "disk-aaaa-1111" in (info.value.hint or "")


# --- the CLI (real subprocesses) ---------------------------------------------------------


@pytest.fixture
def configured(tmp_path: Path, hcbak_env: dict[str, str], source: Path) -> tuple[str, Path]:
    """A config with one repository holding one point of VM web01; returns (point id, repo)."""
    path = _repo(tmp_path)
    with open_repo(path, lock="shared") as repo:
        point = make_point(repo, [SourceDisk(source, "disk-aaaa-1111", 0)])
    config = Config(path=Path(hcbak_env["HCBAK_CONFIG"]))
    config.repositories["main"] = RepoConfig(name="main", path=str(path), block_size=MiB)
    save_config(config)
    return point.id, path


def test_cli_streams_raw_to_stdout(
    hcbak_env: dict[str, str], configured: tuple[str, Path], source: Path
) -> None:
    point_id, _ = configured
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hcbak",
            "restore",
            "disk",
            point_id[:8],
            "--disk",
            "0",
            "--to",
            "-",
        ],
        env=hcbak_env,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == source.read_bytes()


def test_cli_restores_by_vm_at_latest_and_reports_json(
    run_hcbak: RunHcbak, tmp_path: Path, configured: tuple[str, Path], source: Path
) -> None:
    point_id, _ = configured
    out = tmp_path / "cli.raw"
    proc = run_hcbak("restore", "disk", "web01@latest", "--disk", "0", "--to", str(out), "--json")
    assert_no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["point_id"] == point_id and report["format"] == "raw"
    assert out.read_bytes() == source.read_bytes()


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_cli_missing_destination_folder_exits_2_naming_it(
    run_hcbak: RunHcbak, tmp_path: Path, configured: tuple[str, Path], fmt: str
) -> None:
    out = tmp_path / "no-such-folder" / "x.img"
    proc = run_hcbak("restore", "disk", "web01@latest", "--disk", "0", "--to", str(out),
                     "--format", fmt)  # fmt: skip
    assert_no_traceback(proc)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == f"error: folder {out.parent} does not exist (create it first)"
    assert not out.parent.exists()


def test_cli_unknown_point_exits_2_with_one_line(
    run_hcbak: RunHcbak, tmp_path: Path, configured: tuple[str, Path]
) -> None:
    proc = run_hcbak("restore", "disk", "nosuchvm@latest", "--disk", "0", "--to", "x.raw")
    assert_no_traceback(proc)
    assert proc.returncode == 2, proc.stderr
    assert "nosuchvm@latest" in proc.stderr


def test_cli_point_in_two_repositories_is_ambiguous_without_repo(
    run_hcbak: RunHcbak, hcbak_env: dict[str, str], tmp_path: Path, source: Path
) -> None:
    config = Config(path=Path(hcbak_env["HCBAK_CONFIG"]))
    for name in ("a", "b"):
        path = tmp_path / f"repo-{name}"
        init_repo(path, compression="lz4", block_size=MiB, passphrase=None)
        with open_repo(path, lock="shared") as repo:
            make_point(repo, [SourceDisk(source, "disk-aaaa-1111", 0)])
        config.repositories[name] = RepoConfig(name=name, path=str(path), block_size=MiB)
    save_config(config)
    out = tmp_path / "x.raw"
    proc = run_hcbak("restore", "disk", "web01@latest", "--disk", "0", "--to", str(out))
    assert proc.returncode == 2 and "several repositories" in proc.stderr, proc.stderr
    proc = run_hcbak(
        "restore", "disk", "web01@latest", "--disk", "0", "--to", str(out), "--repo", "b"
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == source.read_bytes()


def test_cli_restore_is_refused_while_a_prune_holds_the_exclusive_lock(
    run_hcbak: RunHcbak, tmp_path: Path, configured: tuple[str, Path]
) -> None:
    point_id, repo_path = configured
    out = tmp_path / "locked.raw"
    with open_repo(repo_path, lock="exclusive"):
        proc = run_hcbak("restore", "disk", point_id, "--disk", "0", "--to", str(out))
    assert_no_traceback(proc)
    assert proc.returncode == 5, proc.stderr  # busy: a prune may be removing its blocks
    assert not out.exists()


def test_cli_rejects_json_with_stdout_output(
    run_hcbak: RunHcbak, configured: tuple[str, Path]
) -> None:
    point_id, _ = configured
    proc = run_hcbak("restore", "disk", point_id, "--disk", "0", "--to", "-", "--json")
    assert proc.returncode == 2 and "--json" in proc.stderr, proc.stderr


def test_cli_restore_runs_while_a_backup_holds_a_shared_lock(
    run_hcbak: RunHcbak, tmp_path: Path, configured: tuple[str, Path], source: Path
) -> None:
    point_id, repo_path = configured
    out = tmp_path / "during-backup.raw"
    with open_repo(repo_path, lock="shared"):
        proc = run_hcbak("restore", "disk", point_id, "--disk", "0", "--to", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == source.read_bytes()


def test_cli_restores_from_an_encrypted_repository_with_the_passphrase_from_env(
    run_hcbak: RunHcbak, hcbak_env: dict[str, str], tmp_path: Path, source: Path
) -> None:
    path = tmp_path / "secret-repo"
    secret = Secret("correct horse battery staple")
    init_repo(path, block_size=MiB, passphrase=secret)  # a cheap KDF: tests/conftest.py
    with open_repo(path, passphrase=secret, lock="shared") as repo:
        point = make_point(repo, [SourceDisk(source, "disk-aaaa-1111", 0)])
    config = Config(path=Path(hcbak_env["HCBAK_CONFIG"]))
    config.repositories["vault"] = RepoConfig(
        name="vault", path=str(path), passphrase=SecretRef(env="VAULT_PASS")
    )
    save_config(config)
    out = tmp_path / "vault.qcow2"
    args = ("restore", "disk", point.id[:6], "--disk", "0", "--to", str(out), "--format", "qcow2")
    missing = run_hcbak(*args)
    assert missing.returncode == 2 and "VAULT_PASS" in missing.stderr, missing.stderr
    assert "correct horse" not in missing.stderr
    proc = run_hcbak(*args, env={"VAULT_PASS": secret.reveal()})
    assert proc.returncode == 0, proc.stderr
    if QEMU_IMG:
        qemu_compare(source, out, "qcow2")


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_cli_full_destination_disk_exits_4_naming_it_and_leaves_nothing(
    run_hcbak: RunHcbak, tmp_path: Path, configured: tuple[str, Path], fmt: str
) -> None:
    with mounted_tmpfs(tmp_path / "small", "1m") as small:
        out = small / "x.img"
        proc = run_hcbak("restore", "disk", "web01@latest", "--disk", "0", "--to", str(out),
                         "--format", fmt)  # fmt: skip
        left = sorted(p.name for p in small.iterdir())
    assert_no_traceback(proc)
    assert proc.returncode == 4, proc.stderr
    assert proc.stderr.splitlines()[-1] == f"error: No space left on device: {out}"
    assert left == [], "a failed restore leaves no partial file"


def test_a_short_write_on_a_nearly_full_disk_fails_the_restore(tmp_path: Path) -> None:
    """pwrite may write only part of a block when the disk is nearly full and report
    it by its return value, not an error: the restore must not call that a success."""
    source = tmp_path / "one-block.raw"
    source.write_bytes(os.urandom(MiB))
    with open_repo(_repo(tmp_path), lock="shared") as repo:
        point = make_point(repo, [SourceDisk(source, "disk-bbbb-2222", 0)])
        with mounted_tmpfs(tmp_path / "small", "2m") as small:
            (small / "filler").write_bytes(bytes(2 * MiB - 512 * 1024))  # 512 KiB stay free
            with pytest.raises(OSError, match="No space left"):
                restore_disk(repo, point, "0", small / "x.raw", "raw")
            left = sorted(p.name for p in small.iterdir())
    assert left == ["filler"]
