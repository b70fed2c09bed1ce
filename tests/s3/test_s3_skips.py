"""Where no gateway can start (no root, no packages, no script), the S3 tests skip and
say why in the summary: they never pass without having run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_s3_tests_skip_with_the_reason_when_the_gateway_cannot_start(tmp_path: Path) -> None:
    fake = tmp_path / "ceph-rgw.sh"
    fake.write_text("echo 'ceph-rgw: apt-get install needs root' >&2\nexit 1\n")
    env = {k: v for k, v in os.environ.items() if k != "HCBAK_TEST_CEPH_RGW_DIR"}
    env["HCBAK_TEST_CEPH_RGW"] = str(fake)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p", "no:cacheprovider",
         "-rs", "tests/s3/test_s3_store.py", "tests/repo/test_storage_contract.py",
         "-k", "wrong_keys or missing_bucket or (s3 and put_then_get)",
         "--basetemp", str(tmp_path / "inner")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "3 skipped" in out and "passed" not in out, out
    assert "SKIPPED" in out and "Ceph RGW could not start" in out, out
    assert "apt-get install needs root" in out, out  # the script's own last words
