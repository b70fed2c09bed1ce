"""What hcbak writes is private whatever the umask (docs/format.md, docs/operations.md):
an unencrypted repository is the VMs' disks in the clear, an encrypted one holds the
wrapped key, and the state dir's journals and run logs name every VM. Plus the warning
for a secret file that others may read, and `--debug` through `job run`. Real `hcbak`
subprocesses, the simulator, real files."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harness import RunHcbak, assert_no_traceback

from hcbak.config import Retention, save_config
from hcbak.secrets import SecretRef

from .helpers import MiB, lab


@contextmanager
def umask(mask: int) -> Iterator[None]:
    """The umask of this process and so of the `hcbak` it starts."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _modes(root: Path) -> dict[str, str]:
    """Every folder and file under `root` (root included) -> its mode, octal."""
    out = {".": oct(stat.S_IMODE(root.stat().st_mode))}
    for path in root.rglob("*"):
        out[str(path.relative_to(root))] = oct(stat.S_IMODE(path.lstat().st_mode))
    return out


def _not_private(root: Path) -> dict[str, str]:
    want = {True: "0o700", False: "0o600"}
    found = _modes(root)
    return {p: m for p, m in found.items() if m != want[(root / p).is_dir()]}


def test_repository_state_dir_and_run_logs_are_private_under_umask_022(
    tmp_path: Path, run_hcbak: RunHcbak
) -> None:
    with umask(0o022), lab(tmp_path, retention=Retention(keep_last=1), prune="after_run") as L:
        vm = L.sim.create_vm("web01", [2 * MiB], tags=["nightly"])
        for seed in (1, 2):  # two points: retention forgets one, prune rewrites
            L.sim.fill(L.sim.disk_uuids(vm)[0], seed=seed)
            proc = run_hcbak("job", "run", "nightly", env=L.env)
            assert proc.returncode == 0, proc.stderr
        verified = run_hcbak("repo", "verify", "main", env=L.env)  # keeps its last result
        assert verified.returncode == 0, verified.stderr
        repo, state = _modes(L.repo_path), _modes(tmp_path / "state")
        # what the test claims to cover exists
        assert {"config", "packs", "index", "points", "locks"} <= set(repo)
        for folder in ("packs", "index", "points"):
            assert any(p.startswith(f"{folder}/") and (L.repo_path / p).is_file() for p in repo)
        assert {"jobs/nightly.json", "logs", "worker.lock", "verify"} <= set(state)
        assert any(p.startswith("verify/") for p in state)
        assert sum(p.startswith("logs/run-") for p in state) == 2
        assert _not_private(L.repo_path) == {}
        assert _not_private(tmp_path / "state") == {}


def test_a_new_repository_is_private_whatever_the_umask_and_a_loose_passphrase_file_warns(
    tmp_path: Path, run_hcbak: RunHcbak
) -> None:
    secret = tmp_path / "pass"
    secret.write_text("a passphrase of some length\n")
    secret.chmod(0o644)
    with umask(0o002):
        proc = run_hcbak("repo", "add", "main", "--path", str(tmp_path / "a" / "repo"),
                         "--encrypt", "--passphrase-file", str(secret))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    warning = (
        f"warning: secret file {secret} is readable by other users (mode 0644); "
        f"run `chmod 600 {secret}`"
    )
    assert proc.stderr.count(warning) == 1, proc.stderr  # once, however often it is read
    assert_no_traceback(proc)
    assert _not_private(tmp_path / "a") == {}  # the folder it had to create too
    secret.chmod(0o600)
    quiet = run_hcbak("repo", "show", "main")
    assert quiet.returncode == 0, quiet.stderr
    assert "warning" not in quiet.stderr


def test_job_run_warns_about_a_loose_password_file_and_shows_debug_lines(
    tmp_path: Path, run_hcbak: RunHcbak
) -> None:
    """Through `job run`'s own entry (hcbak/cli/entry.py), which runs without Typer."""
    with lab(tmp_path) as L:
        L.sim.create_vm("web01", [1 * MiB], tags=["nightly"])
        password = tmp_path / "cluster-password"
        password.write_text(L.sim.backup_user[1] + "\n")
        password.chmod(0o640)
        L.config.clusters["lab"].password = SecretRef(file=str(password))
        save_config(L.config)
        plain = run_hcbak("job", "run", "nightly", env=L.env)
        debug = run_hcbak("--debug", "job", "run", "nightly", env=L.env)
    assert plain.returncode == 0, plain.stderr
    assert f"warning: secret file {password} is readable by other users (mode 0640)" in (
        plain.stderr
    )
    assert debug.returncode == 0, debug.stderr
    # a debug record of the cluster client, logged after the run log started
    assert re.search(r"POST /rest/v1/VirDomainSnapshot on \S+ -> 200", debug.stderr), debug.stderr
    assert "-> 200" not in plain.stderr
