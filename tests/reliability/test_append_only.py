"""An append-only folder with real parts: a loop-mounted ext4, `hcbak repo harden` as
root, and hcbak backing up and restoring as an unprivileged backup user (`nobody`).

The backup user's hcbak runs under the system's python3.11 with the worktree's venv on
PYTHONPATH (the venv's own interpreter lives under /root, which `nobody` cannot
reach); the simulator and the root commands run as root. Needs root, mkfs.ext4 and a
loop device: skipped with the reason otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from engine.helpers import BLOCK, MiB, lab
from harness import HCBAK

from hcbak.config import save_config
from hcbak.repo import init_repo

ROOT_DIR = Path(__file__).parents[2]
SYSTEM_PYTHON = "/usr/bin/python3.11"


def _backup_user() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        pytest.skip("needs root: mounts an ext4 image and runs hcbak as another user")
    for tool in ("mkfs.ext4", "mount", "umount"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    try:
        user = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user `nobody` to back up as")
    if not Path(SYSTEM_PYTHON).exists():
        pytest.skip(f"{SYSTEM_PYTHON} is missing (runs hcbak as the backup user)")
    return user


@contextmanager
def ext4_mount(where: Path) -> Iterator[Path]:
    """A fresh 128 MiB ext4 filesystem on a loop device at where/fs."""
    image, mnt = where / "ext4.img", where / "fs"
    mnt.mkdir()
    with open(image, "wb") as fh:
        fh.truncate(128 * MiB)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"mkfs.ext4 failed: {made.stderr.strip()}")
    mounted = subprocess.run(["mount", "-o", "loop", str(image), str(mnt)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot loop-mount an ext4 image here: {mounted.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def as_user(
    user: pwd.struct_passwd, env: dict[str, str], *argv: str
) -> subprocess.CompletedProcess[str]:
    """Run a command as the backup user (argv[0] "hcbak": hcbak itself)."""
    full = {**os.environ, **env, "HOME": "/nonexistent", "PYTHONDONTWRITEBYTECODE": "1"}
    if argv[0] == "hcbak":
        site = next((ROOT_DIR / ".venv" / "lib").glob("python3*/site-packages"))
        full["PYTHONPATH"] = f"{ROOT_DIR}:{site}"
        argv = (SYSTEM_PYTHON, "-m", "hcbak", *argv[1:])
    return subprocess.run(list(argv), env=full, capture_output=True, text=True, timeout=120,
                          user=user.pw_uid, group=user.pw_gid, extra_groups=[],
                          cwd="/")  # fmt: skip


def as_root(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HCBAK, *argv], env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def _flags(path: Path) -> str:
    return subprocess.run(
        ["lsattr", "-d", str(path)], capture_output=True, text=True
    ).stdout.split()[0]


def test_backup_and_restore_work_and_nothing_can_be_deleted_or_rewritten() -> None:
    user = _backup_user()
    base = Path(tempfile.mkdtemp(prefix="hcbak-append-only-"))  # reachable by `nobody`
    try:
        os.chmod(base, 0o755)
        _scenario(base, user)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _scenario(base: Path, user: pwd.struct_passwd) -> None:
    with ext4_mount(base) as fs, lab(base / "lab") as L:
        probe = as_user(user, {}, "hcbak", "--version")
        if probe.returncode != 0:
            pytest.skip(f"the backup user cannot run hcbak here: {probe.stderr.strip()[-300:]}")
        repo = fs / "repo"
        init_repo(repo, block_size=BLOCK)
        cfg = L.config.repositories["main"]
        cfg.path, cfg.append_only = str(repo), True
        save_config(L.config)
        out = base / "out"
        for folder in (base / "lab" / "state", out):
            folder.mkdir(exist_ok=True)
        for owned in (L.config.path, base / "lab" / "state", out):
            os.chown(owned, user.pw_uid, user.pw_gid)
        hardened = as_root(L.env, "repo", "harden", str(repo), "--backup-user", "nobody")
        assert hardened.returncode == 0, hardened.stderr
        assert "a" in _flags(repo / "packs") and "a" not in _flags(repo / "locks")
        assert "i" in _flags(repo / "config")

        vm = L.sim.create_vm("web01", [2 * MiB], tags=["nightly"])
        disk = L.sim.disk_uuids(vm)[0]
        L.sim.fill(disk, seed=3)
        run = as_user(user, L.env, "hcbak", "job", "run", "nightly", "--json")
        assert run.returncode == 0, run.stderr
        first = json.loads(run.stdout)["jobs"][0]["vms"][0]["point_id"]
        point_file = repo / "points" / first
        # Not sealed yet: the backup user wrote it, but +a on the folder already keeps
        # it from being removed or renamed.
        assert point_file.stat().st_uid == user.pw_uid
        for argv in (("rm", "-f", str(point_file)), ("mv", str(point_file), str(repo / "x"))):
            denied = as_user(user, {}, *argv)
            assert denied.returncode != 0 and "Operation not permitted" in denied.stderr

        # hcbak's temp files live in locks/ (the one folder it may remove entries
        # from): none is left behind where +a would keep it forever.
        strays = [p for p in repo.rglob(".tmp-*") if p.parent.name != "locks"]
        assert strays == []

        # A planted symlink must never make root's harden touch what it points at.
        victim = base / "victim"
        victim.write_text("root's file\n")
        os.chmod(victim, 0o644)
        planted = as_user(user, {}, "ln", "-s", str(victim), str(repo / "packs" / "00" / "evil"))
        assert planted.returncode == 0, planted.stderr

        sealed = as_root(L.env, "repo", "harden", str(repo), "--backup-user", "nobody")
        assert sealed.returncode == 0, sealed.stderr
        count = re.search(r"(\d+) files sealed", sealed.stderr)
        assert count and int(count[1]) >= 3, sealed.stderr  # the point, its pack, its segment
        assert re.search(r"left for a later run: \S*/packs/00/evil", sealed.stderr), sealed.stderr
        st = victim.stat()
        assert (st.st_uid, st.st_mode & 0o7777) == (0, 0o644) and "i" not in _flags(victim)
        assert point_file.stat().st_uid == 0 and "i" in _flags(point_file)
        before = hashlib.sha256(point_file.read_bytes()).hexdigest()
        packs = [p for p in (repo / "packs").rglob("*") if p.is_file()]
        for argv in (
            ("sh", "-c", f"echo x > {point_file}"),
            ("truncate", "-s", "0", str(packs[0])),
            ("chmod", "u+w", str(point_file)),
            ("rm", "-f", str(packs[0])),
            ("rm", "-rf", str(repo / "index")),
        ):
            denied = as_user(user, {}, *argv)
            assert denied.returncode != 0, argv
        # Not even root without first lifting the attribute:
        assert subprocess.run(["rm", "-f", str(point_file)], capture_output=True).returncode != 0
        assert hashlib.sha256(point_file.read_bytes()).hexdigest() == before

        # Incremental backups go on; hcbak's own deleting commands refuse, exit 2.
        L.sim.fill(disk, seed=4)
        again = as_user(user, L.env, "hcbak", "job", "run", "nightly", "--json")
        assert again.returncode == 0, again.stderr
        for argv in (
            ("points", "forget", first, "--repo", "main"),
            ("repo", "prune", "main"),
            ("repo", "forget", "main"),
            ("repo", "repair", "main", "--salvage"),
        ):
            refused = as_user(user, L.env, "hcbak", *argv)
            assert refused.returncode == 2, (argv, refused.stderr)
            assert "append-only" in refused.stderr and "trusted host" in refused.stderr
            assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert point_file.exists()

        verify = as_user(user, L.env, "hcbak", "repo", "verify", "main", "--read-data")
        assert verify.returncode == 0, verify.stderr
        restored = as_user(user, L.env, "hcbak", "restore", "disk", first, "--disk", "0",
                           "--to", str(out / "web01.raw"))  # fmt: skip
        assert restored.returncode == 0, restored.stderr
        assert (out / "web01.raw").read_bytes() == L.point_content(first, disk)
        assert len(L.points()) == 2

        # The trusted maintenance path: lift as root, prune, harden again.
        lifted = as_root(L.env, "repo", "harden", str(repo), "--lift")
        assert lifted.returncode == 0, lifted.stderr
        (repo / "packs" / "00" / "evil").unlink()  # junk the attacker added: removed now
        cfg.append_only = False
        save_config(L.config)
        os.chown(L.config.path, 0, 0)
        forgot = as_root(L.env, "points", "forget", first, "--repo", "main")
        assert forgot.returncode == 0, forgot.stderr
        pruned = as_root(L.env, "repo", "prune", "main")
        assert pruned.returncode == 0, pruned.stderr
        assert not point_file.exists()
        rehardened = as_root(L.env, "repo", "harden", str(repo), "--backup-user", "nobody")
        assert rehardened.returncode == 0, rehardened.stderr

        # A hardened folder whose entry forgot `append_only: true` is refused loudly
        # (else every object would keep a second, writable temp name beside it).
        os.chown(L.config.path, user.pw_uid, user.pw_gid)
        L.sim.fill(disk, seed=5)
        forgot_flag = as_user(user, L.env, "hcbak", "job", "run", "nightly")
        assert forgot_flag.returncode == 4, forgot_flag.stderr
        assert "needs `append_only: true`" in forgot_flag.stderr
        assert "Traceback" not in forgot_flag.stderr
