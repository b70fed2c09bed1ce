"""The v1 golden repository (tests/data/golden-v1) must open and restore forever."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from repo_helpers import read_disk

from hcbak.errors import PassphraseError
from hcbak.repo import open_repo
from hcbak.repo.verify import verify
from hcbak.secrets import Secret

GOLDEN = Path(__file__).parent.parent / "data" / "golden-v1"
PASSPHRASE = Secret("golden-v1 passphrase")
EXPECTED = {
    "web": "76f789f9c0eeb663d02493b266b8709cefb1287fdbaea8adc27f79d87ffd0675",
    "db": "2ad8eda4ad4ffd0c8aedcdd8f130b2a6001dd7c2a8ae8a721f2835810d06bdf2",
}


@pytest.fixture
def golden(tmp_path: Path) -> Path:
    dest = tmp_path / "golden-v1"
    shutil.copytree(GOLDEN, dest)
    return dest


def test_golden_v1_restores_bit_exact_and_verifies(golden: Path) -> None:
    with open_repo(golden, passphrase=PASSPHRASE) as repo:
        assert repo.config.version == 1 and repo.config.encrypted
        points = repo.list_points()
        assert [p.vm_name for p in points] == ["web", "db"]
        for p in points:
            assert hashlib.sha256(read_disk(repo, p.id)).hexdigest() == EXPECTED[p.vm_name]
        point = repo.load_point(repo.resolve_point("db@2026-11-27"))
        assert point.snapshot_uuid == "snap-db" and point.disks[0].serial == 3
        assert verify(repo, read_data_percent=100).errors == []


def test_golden_v1_refuses_a_wrong_passphrase(golden: Path) -> None:
    with pytest.raises(PassphraseError):
        with open_repo(golden, passphrase=Secret("not it")):
            pass
