"""The golden repositories (tests/data/golden-v1, golden-v2) must open and restore
forever: v1 as first released (scrypt, XXH3 ids), v2 as first released (Argon2id at
its real parameters, keyed-BLAKE3 ids, checksum and settings MAC). Both hold the same
disks (tests/repo/make_golden.py), so they restore to the same bytes."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from repo_helpers import read_disk

from hcbak.errors import IntegrityError, PassphraseError
from hcbak.repo import open_repo
from hcbak.repo.kdf import WEAKEN_ENV
from hcbak.repo.verify import verify
from hcbak.secrets import Secret

DATA = Path(__file__).parent.parent / "data"
EXPECTED = {
    "web": "76f789f9c0eeb663d02493b266b8709cefb1287fdbaea8adc27f79d87ffd0675",
    "db": "2ad8eda4ad4ffd0c8aedcdd8f130b2a6001dd7c2a8ae8a721f2835810d06bdf2",
}


def passphrase(version: int) -> Secret:
    return Secret(f"golden-v{version} passphrase")


@pytest.fixture(params=[1, 2], ids=["v1", "v2"])
def golden(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[int, Path]:
    """A copy of a golden repository, opened without the tests' weakened KDF floor."""
    monkeypatch.delenv(WEAKEN_ENV)
    version = int(request.param)
    dest = tmp_path / f"golden-v{version}"
    shutil.copytree(DATA / f"golden-v{version}", dest)
    return version, dest


def test_golden_restores_bit_exact_and_verifies(golden: tuple[int, Path]) -> None:
    version, root = golden
    with open_repo(root, passphrase=passphrase(version)) as repo:
        assert repo.config.version == version and repo.config.encrypted
        assert repo.config.id_hash == ("xxh3-128-seeded" if version == 1 else "blake3-keyed-128")
        points = repo.list_points()
        assert [p.vm_name for p in points] == ["web", "db"]
        for p in points:
            assert hashlib.sha256(read_disk(repo, p.id)).hexdigest() == EXPECTED[p.vm_name]
        point = repo.load_point(repo.resolve_point("db@2026-11-27"))
        assert point.snapshot_uuid == "snap-db" and point.disks[0].serial == 3
        assert verify(repo, read_data_percent=100).errors == []


def test_golden_refuses_a_wrong_passphrase(golden: tuple[int, Path]) -> None:
    _, root = golden
    with pytest.raises(PassphraseError):
        with open_repo(root, passphrase=Secret("not it")):
            pass


def test_a_flipped_bit_of_the_wrapped_key_is_damage_in_v2_and_wrong_passphrase_in_v1(
    golden: tuple[int, Path],
) -> None:
    version, root = golden
    doc = json.loads((root / "config").read_text())
    key = doc["encryption"]["wrapped_key"]
    doc["encryption"]["wrapped_key"] = key[:-1] + ("0" if key[-1] != "0" else "1")
    (root / "config").write_text(json.dumps(doc))
    expected = PassphraseError if version == 1 else IntegrityError  # v1 cannot tell
    with pytest.raises(expected):
        with open_repo(root, passphrase=passphrase(version)):
            pass
