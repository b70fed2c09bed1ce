"""Bit flips and truncations in every kind of repository file.

A golden repository (two points of one VM: a full and an incremental, made by real
`hcbak job run`s against the simulator) is built once per module for a plain and an
encrypted repository; each case damages one file of a fresh copy at seeded offsets and
runs `hcbak repo verify --read-data`. Data files (packs, index segments, point
manifests) must be reported as damage, exit 6. Damage to the `config` file (which also
holds the wrapped key of an encrypted repository) is damage too, exit 6: format v2's
checksum tells it from a wrong passphrase (exit 4). A
damaged lock file must read as a foreign lock (exit 5) that `repo unlock --force`
clears. Never a traceback.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from engine.helpers import MiB, lab

from hcbak.config import RepoConfig, save_config
from hcbak.repo import init_repo, open_repo
from hcbak.secrets import Secret, SecretRef

from .helpers import cli, file_sha256, guest_writes, sha256

pytestmark = pytest.mark.reliability

PASSPHRASE = "reliability passphrase"
SEED = 6


@dataclass
class Golden:
    repo: Path
    env: dict[str, str]
    encrypted: bool
    points: dict[str, str]  # point id -> sha256 of the disk the cluster held at backup


def _build(tmp: Path, encrypted: bool) -> Golden:
    with lab(tmp) as L:
        repo = tmp / "golden"
        secret = Secret(PASSPHRASE) if encrypted else None
        init_repo(
            repo,
            block_size=256 << 10,
            passphrase=secret,
        )  # a cheap Argon2id: tests/conftest.py sets HCBAK_TESTONLY_WEAKEN_KDF
        L.config.repositories["main"] = RepoConfig(
            name="main",
            path=str(repo),
            block_size=256 << 10,
            passphrase=SecretRef(env="HCBAK_TEST_PASSPHRASE") if encrypted else None,
        )
        save_config(L.config)
        env = {**L.env, "HCBAK_TEST_PASSPHRASE": PASSPHRASE}
        vm = L.sim.create_vm("web01", [2 * MiB], tags=["nightly"])
        disk = L.sim.disk_uuids(vm)[0]
        L.sim.fill(disk, seed=60)
        points: dict[str, str] = {}
        for n in range(2):  # a full and an incremental
            if n:
                guest_writes(L, disk, random.Random(61))
            live = sha256(L.sim.read_live(disk, 0, 2 * MiB))
            assert cli(env, "job", "run", "nightly").code == 0
            with open_repo(repo, passphrase=secret, lock=None) as opened:
                (new,) = {p.id for p in opened.list_points()} - set(points)
            points[new] = live
        assert cli(env, "repo", "verify", "main", "--read-data").code == 0
        return Golden(repo, env, encrypted, points)


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "encrypted"])
def golden(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Golden:
    return _build(tmp_path_factory.mktemp("golden"), bool(request.param))


@pytest.fixture
def damaged_copy(golden: Golden, tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A copy of the golden repository and a config that points at it."""
    from hcbak.config import load_config

    copy = tmp_path / "repo"
    shutil.copytree(golden.repo, copy)
    config = load_config(Path(golden.env["HCBAK_CONFIG"]))
    config.path = tmp_path / "config.yaml"
    config.repositories["main"].path = str(copy)
    save_config(config)
    env = {**golden.env, "HCBAK_CONFIG": str(config.path), "HCBAK_STATE_DIR": str(tmp_path)}
    yield copy, env


def _files(repo: Path, kind: str) -> list[Path]:
    if kind == "config":
        return [repo / "config"]
    return sorted(p for p in (repo / kind).rglob("*") if p.is_file())


def _flip(path: Path, fraction: float) -> None:
    data = bytearray(path.read_bytes())
    offset = min(len(data) - 1, int(len(data) * fraction))
    data[offset] ^= 1 << (offset % 8)
    path.write_bytes(bytes(data))


def _verify_finds_damage_and_restore_agrees(
    golden: Golden, env: dict[str, str], out_dir: Path
) -> None:
    """`repo verify --read-data` exits 6; every point it does not name as affected
    restores bit-exact. A point it names fails to restore with exit 6 and leaves no
    file behind, unless every block it needs still reads back under its hash (verify
    distrusts a whole pack whose trailer is damaged; restore checks each block): then
    it restores bit-exact. Never wrong data that looks like a disk."""
    res = cli(env, "repo", "verify", "main", "--read-data", "--json")
    res.assert_clean()
    assert res.code == 6, (res.code, res.err)
    affected = set(json.loads(res.out)["affected_points"])
    assert affected <= set(golden.points), affected
    for pid, digest in golden.points.items():
        out = out_dir / f"restored-{pid}.raw"
        restored = cli(env, "restore", "disk", pid, "--disk", "0", "--to", str(out))
        restored.assert_clean()
        if pid in affected and restored.code != 0:
            assert restored.code == 6, (pid, restored.code, restored.err)
            assert not out.exists(), "a failed restore leaves no file at the destination"
        else:
            assert restored.code == 0, (pid, restored.err)
            assert file_sha256(out) == digest, f"point {pid} restored other bytes"


def _truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)] if keep < 1 else data[:-1])


# Seeded positions across each file: the header, the middle and the tail (trailers,
# checksums and MACs live at the ends).
_rnd = random.Random(SEED)
FLIPS = [0.0, _rnd.uniform(0.01, 0.2), _rnd.uniform(0.4, 0.6), _rnd.uniform(0.8, 0.99), 0.9999]
TRUNCATIONS = [0.0, 0.5, 1.0]  # empty, half, one byte short
DATA_KINDS = ["packs", "index", "points"]


@pytest.mark.parametrize("fraction", FLIPS, ids=lambda f: f"at{f:.3f}")
@pytest.mark.parametrize("kind", DATA_KINDS)
def test_bit_flip_in_a_data_file_is_found_by_verify_with_exit_6(
    golden: Golden, damaged_copy: tuple[Path, dict[str, str]], kind: str, fraction: float
) -> None:
    repo, env = damaged_copy
    for path in _files(repo, kind)[:1]:
        _flip(path, fraction)
    _verify_finds_damage_and_restore_agrees(golden, env, repo.parent)


@pytest.mark.parametrize("keep", TRUNCATIONS, ids=["empty", "half", "minus1"])
@pytest.mark.parametrize("kind", DATA_KINDS)
def test_truncated_data_file_is_found_by_verify_with_exit_6(
    golden: Golden, damaged_copy: tuple[Path, dict[str, str]], kind: str, keep: float
) -> None:
    repo, env = damaged_copy
    _truncate(_files(repo, kind)[0], keep)
    _verify_finds_damage_and_restore_agrees(golden, env, repo.parent)


@pytest.mark.parametrize("kind", ["packs", "index"])
def test_missing_data_file_is_found_by_verify_with_exit_6(
    golden: Golden, damaged_copy: tuple[Path, dict[str, str]], kind: str
) -> None:
    repo, env = damaged_copy
    _files(repo, kind)[0].unlink()
    _verify_finds_damage_and_restore_agrees(golden, env, repo.parent)


# Format v2: the config's checksum covers every field (docs/format.md), so damage to
# any of them is refused as damage (exit 6), none is only informational.
INFORMATIONAL: dict[bool, set[str]] = {False: set(), True: set()}


def _flip_field(path: Path, field: str) -> None:
    """Flip bit 6 of the middle character of a field's value: digits and hex letters
    become non-hex characters, so the damage is the same whatever the random salt, key
    or id of this particular repository are."""
    text = path.read_bytes()
    key = f'"{field}": '.encode()
    start = text.index(key) + len(key)
    end = start
    while text[end : end + 1] not in (b",", b"\n", b"}"):
        end += 1
    mid = (start + end) // 2
    path.write_bytes(text[:mid] + bytes([text[mid] ^ 0x40]) + text[mid + 1 :])


CONFIG_FIELDS = ["block_size", "compression", "created", "format", "id_hash", "id_key",
                 "repo_id", "version", "checksum", "settings_mac", "cipher", "kdf",
                 "memory_kib", "iterations", "lanes", "salt", "wrapped_key"]  # fmt: skip


@pytest.mark.parametrize("field", CONFIG_FIELDS)
def test_bit_flip_in_any_config_field_is_refused_or_harmless(
    golden: Golden, damaged_copy: tuple[Path, dict[str, str]], field: str
) -> None:
    repo, env = damaged_copy
    before = (repo / "config").read_bytes()
    if f'"{field}": '.encode() not in before:
        pytest.skip(f"no {field} in this repository's config")
    _flip_field(repo / "config", field)
    _expect_refused_or_harmless(golden, repo, env, before, field)


@pytest.mark.parametrize(
    "damage", [("flip", 0.0), ("flip", 0.9999)] + [("truncate", k) for k in (0.0, 0.5, 0.9)]
)
def test_damaged_config_file_gives_a_clear_error_never_a_traceback(
    golden: Golden, damaged_copy: tuple[Path, dict[str, str]], damage: tuple[str, float]
) -> None:
    repo, env = damaged_copy
    how, where = damage
    before = (repo / "config").read_bytes()
    (_flip if how == "flip" else _truncate)(repo / "config", where)
    _expect_refused_or_harmless(golden, repo, env, before)


def test_a_config_that_is_no_longer_json_is_reported_as_damage_exit_6(
    golden: Golden, damaged_copy: tuple[Path, dict[str, str]]
) -> None:
    repo, env = damaged_copy
    _truncate(repo / "config", 0.5)
    for args in (("repo", "verify", "main"), ("points", "list", "--repo", "main")):
        res = cli(env, *args)
        res.assert_clean()
        assert res.code == 6, (args, res.err)
        assert res.err.startswith(f"error: repository config {repo / 'config'} is damaged"), res.err


def _expect_refused_or_harmless(
    golden: Golden, repo: Path, env: dict[str, str], before: bytes, field: str = ""
) -> None:
    res = cli(env, "repo", "verify", "main", "--read-data")
    res.assert_clean()
    if res.code == 0:
        old, new = json.loads(before), json.loads((repo / "config").read_bytes())
        changed = {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)}
        assert changed <= INFORMATIONAL[golden.encrypted], changed
    elif field == "format":  # no longer names an hcbak repository config at all
        assert res.code == 4, (res.code, res.err)
    else:  # format v2: the checksum covers every field, so any change is damage
        assert res.code == 6, (res.code, res.err)
        assert res.err.startswith("error: repository config"), res.err
        assert "damaged" in res.err and "passphrase" not in res.err, res.err


@pytest.mark.parametrize(
    ("section", "field", "value"),
    [
        pytest.param("", "compression", "lz5", id="unknown-compression"),
        pytest.param("", "version", 99, id="future-version"),
        pytest.param("", "repo_id", "../../etc", id="repo-id-not-hex"),
        pytest.param("encryption", "salt", "zz" + "0" * 30, id="non-hex-salt"),
        pytest.param("encryption", "salt", 5, id="salt-not-a-string"),
        pytest.param("encryption", "wrapped_key", "<", id="non-hex-key"),
        pytest.param("encryption", "wrapped_key", "00" * 68, id="key-of-v1-length"),
        pytest.param("encryption", "memory_kib", 0, id="argon2-memory-zero"),
        pytest.param("encryption", "lanes", 0, id="argon2-lanes-zero"),
        pytest.param("", "block_size", "x", id="block-size-not-a-number"),
        pytest.param("", "block_size", 7, id="block-size-out-of-range"),
        pytest.param("", "id_hash", "xxh3", id="unknown-id-hash"),
        pytest.param("encryption", "cipher", "rot13", id="unknown-cipher"),
        pytest.param("encryption", "kdf", "scrypt", id="v1-kdf-in-v2"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("checksum", ["stale", "recomputed"])
def test_malformed_config_fields_are_refused_with_a_clear_error(
    golden: Golden,
    damaged_copy: tuple[Path, dict[str, str]],
    section: str,
    field: str,
    value: object,
    checksum: str,
) -> None:
    """With the checksum left as it was (damage) and recomputed (someone who read
    docs/format.md): exit 6 either way, naming the field or the checksum; only a
    future version is exit 4 ("upgrade hcbak")."""
    from hcbak.repo.settings import canonical

    if section and not golden.encrypted:
        pytest.skip("only an encrypted repository has an encryption section")
    repo, env = damaged_copy
    doc = json.loads((repo / "config").read_text())
    (doc[section] if section else doc)[field] = value
    if checksum == "recomputed":
        doc["checksum"] = hashlib.sha256(canonical(doc, ("checksum",))).hexdigest()
    (repo / "config").write_text(json.dumps(doc))
    res = cli(env, "repo", "verify", "main")
    res.assert_clean()
    assert res.code == (4 if field == "version" else 6), res.err
    if checksum == "stale" and field != "version":
        assert "checksum does not match" in res.err, res.err


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_damaged_lock_file_reads_as_a_foreign_lock_that_unlock_force_clears(
    damaged_copy: tuple[Path, dict[str, str]], how: str
) -> None:
    from hcbak.repo import open_repo

    repo, env = damaged_copy
    with open_repo(repo, lock="exclusive", passphrase=Secret(PASSPHRASE)):
        (lock,) = _files(repo, "locks")
        saved = lock.read_bytes()
    lock.write_bytes(saved)  # a lock left behind, as by a crash
    (_flip if how == "flip" else _truncate)(lock, 0.0 if how == "flip" else 0.5)
    res = cli(env, "repo", "verify", "main")
    res.assert_clean()
    assert res.code == 5, res.err
    cleared = cli(env, "repo", "unlock", "main", "--force")
    assert cleared.code == 0, cleared.err
    res = cli(env, "repo", "verify", "main", "--read-data")
    assert res.code == 0, res.err
