"""Shared pieces of the CLI tests: a base config and an exit-code/message check
(the runners, `run_hcbak` and `run_inproc`, are tests/harness.py's, via conftest.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from harness import assert_no_traceback

FP = "ab" * 32

BASE = f"""\
clusters:
  prod:
    nodes: [10.0.0.11]
    username: hcbak
    password_env: HCBAK_TEST_PW
    tls: {{fingerprints: {{"10.0.0.11": "{FP}"}}}}
repositories:
  main: {{path: /srv/hcbak}}
"""


@pytest.fixture
def config_path(hcbak_env: dict[str, str]) -> Path:
    return Path(hcbak_env["HCBAK_CONFIG"])


@pytest.fixture
def base_config(config_path: Path) -> Path:
    """A valid config with cluster `prod` and repository `main` (no jobs)."""
    config_path.write_text(BASE)
    config_path.chmod(0o600)
    return config_path


def expect(proc: subprocess.CompletedProcess[str], code: int, *fragments: str) -> None:
    """Exit code, message fragments on stderr, and never a traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr
    assert_no_traceback(proc)
