"""The files in examples/ stay true: the config loads, the script branches on every code."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from hcbak.config import load_config
from hcbak.errors import ExitCode
from hcbak.schedule import CronSchedule

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_example_config_loads_with_the_real_loader_and_uses_every_section() -> None:
    config = load_config(EXAMPLES / "config.yaml")
    assert config.smtp is not None and config.state_dir
    prod = config.cluster("prod")
    assert len(prod.nodes) == 3 and len(prod.tls.fingerprints) == 2 and prod.worker_vm
    assert config.repo("main").encrypted and config.repo("offsite").compression == "zstd"
    nightly = config.job("nightly")
    assert nightly.notify and nightly.pre_hook and nightly.post_hook and nightly.alert_after
    assert not nightly.retention.is_empty() and nightly.prune == "after_run"
    assert config.job("weekly-offsite").schedule == "30 3 * * sun"


def test_example_crontab_runs_due_jobs_with_logging() -> None:
    lines = [
        ln for ln in (EXAMPLES / "crontab").read_text().splitlines()
        if ln.strip() and not ln.startswith("#") and "=" not in ln.split()[0]
    ]  # fmt: skip
    assert len(lines) == 1
    fields = lines[0].split()
    CronSchedule.parse(" ".join(fields[:5]))
    assert " ".join(fields[5:9]) == "hcbak job run --due" and ">>/var/log/hcbak/" in lines[0]


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
@pytest.mark.parametrize("code", [int(c) for c in ExitCode])
def test_backup_script_branches_on_every_exit_code(tmp_path: Path, code: int) -> None:
    # A stand-in `hcbak` that exits with a chosen code: a real run cannot produce
    # every code (partial, integrity, ...) without a cluster, and the point here is
    # the script's branching, not hcbak's.
    fake = tmp_path / "bin" / "hcbak"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "{{}}"\nexit {code}\n')
    fake.chmod(0o755)
    # PATH with only the tools the script needs and no `mail`: no alert leaves this machine.
    for tool in ("mktemp", "cat", "rm"):
        (fake.parent / tool).symlink_to(shutil.which(tool) or f"/bin/{tool}")
    env = {**os.environ, "PATH": str(fake.parent)}
    proc = subprocess.run(
        [
            shutil.which("bash") or "bash",
            str(EXAMPLES / "backup-and-alert.sh"),
            "nightly",
            "nobody@example.invalid",
        ],
        env={k: v for k, v in env.items() if k != "MAILRC"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == code
    output = proc.stdout + proc.stderr
    assert "unexpected exit code" not in output
    assert "hcbak nightly:" in output or shutil.which("mail")
