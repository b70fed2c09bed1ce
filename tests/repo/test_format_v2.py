"""Format v2 (issue 17, items 4, 5, 6, 8) through the real CLI where a user meets it.

- a repository's `config` replaced with one that switches encryption off, or with
  another repository's config, is refused by `job run`, `restore` and `points list`
  (exit 6) because hcbak's config pins the repository's id and encryption;
- settings changed by someone without the key (the checksum recomputed, as anyone who
  reads docs/format.md can) fail the settings MAC, exit 6;
- damage to the key material (wrapped key, salt, repository id) is damage, exit 6,
  never "wrong passphrase" (exit 4), which stays the answer to a wrong passphrase;
- key derivation: new repositories use Argon2id at OWASP's parameters, and a config
  asking for less than the documented floor is refused;
- block ids are keyed BLAKE3 in v2 and stay seeded XXH3 in v1.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from engine.helpers import MiB, lab
from harness import HCBAK
from reliability.helpers import cli
from repo_helpers import PASS, make_repo

from hcbak.config import load_config, save_config
from hcbak.errors import IntegrityError, PassphraseError
from hcbak.repo import init_repo, open_repo
from hcbak.repo.codec import CODEC_NONE
from hcbak.repo.kdf import WEAKEN_ENV
from hcbak.repo.pack import frame_blob
from hcbak.repo.settings import canonical
from hcbak.secrets import Secret

PASSPHRASE = "format v2 passphrase"
GOLDEN_V1 = Path(__file__).parent.parent / "data" / "golden-v1"


@dataclass
class Setup:
    tmp: Path
    env: dict[str, str]
    repo: Path
    sim: object


@pytest.fixture(scope="module")
def encrypted_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """A simulator, a job `nightly` on VM web01, and an encrypted repository created by
    `hcbak repo add --encrypt` (which pins its id), with one committed point."""
    tmp = tmp_path_factory.mktemp("v2")
    with lab(tmp) as L:
        env = {**L.env, "HCBAK_TEST_PASSPHRASE": PASSPHRASE}
        repo = tmp / "secure"
        added = cli(env, "repo", "add", "main", "--force", "--path", str(repo), "--encrypt",
                    "--passphrase-env", "HCBAK_TEST_PASSPHRASE")  # fmt: skip
        assert added.code == 0, added.err
        vm = L.sim.create_vm("web01", [2 * MiB], tags=["nightly"])
        L.sim.fill(L.sim.disk_uuids(vm)[0], seed=17)
        assert cli(env, "job", "run", "nightly").code == 0
        yield Setup(tmp, env, repo, L.sim)


@pytest.fixture
def case(encrypted_lab: Setup, tmp_path: Path) -> Iterator[Setup]:
    """The lab's repository restored to its committed state after each test."""
    saved = tmp_path / "saved"
    shutil.copytree(encrypted_lab.repo, saved)
    config_path = Path(encrypted_lab.env["HCBAK_CONFIG"])
    config_text = config_path.read_text()
    yield encrypted_lab
    shutil.rmtree(encrypted_lab.repo)
    shutil.copytree(saved, encrypted_lab.repo)
    config_path.write_text(config_text)


def _pack_count(repo: Path) -> int:
    return sum(1 for p in (repo / "packs").rglob("*") if p.is_file())


def _doc(repo: Path) -> dict[str, object]:
    doc: dict[str, object] = json.loads((repo / "config").read_text())
    return doc


def _write_with_checksum(repo: Path, doc: dict[str, object]) -> None:
    """What anyone who read docs/format.md can do: edit, then recompute the checksum."""
    if doc.get("version", 1) >= 2:  # type: ignore[operator]
        doc["checksum"] = hashlib.sha256(canonical(doc, ("checksum",))).hexdigest()
    (repo / "config").write_text(json.dumps(doc, indent=2))


def _switch_encryption_off(repo: Path) -> None:
    """Replace `config` with a valid unencrypted one that keeps the repository's id."""
    doc = _doc(repo)
    other = repo.parent / "plain-source"
    shutil.rmtree(other, ignore_errors=True)
    init_repo(other, block_size=int(doc["block_size"]))  # type: ignore[call-overload]
    plain = _doc(other)
    plain["repo_id"] = doc["repo_id"]
    _write_with_checksum(repo, plain)


# --- item 4: encryption switched off / another repository -----------------------------
def test_repo_add_pins_the_repository_id_in_the_config(case: Setup) -> None:
    entry = load_config(Path(case.env["HCBAK_CONFIG"])).repositories["main"]
    assert entry.repo_id == _doc(case.repo)["repo_id"]
    assert "repo_id:" in Path(case.env["HCBAK_CONFIG"]).read_text()


def test_adopting_an_existing_repository_pins_its_id_after_proving_the_passphrase(
    case: Setup,
) -> None:
    args = ("repo", "add", "again", "--path", str(case.repo), "--encrypt")
    wrong = cli({**case.env, "WRONG_PASS": "not it"}, *args, "--passphrase-env", "WRONG_PASS")
    assert wrong.code == 4, wrong.err  # nothing pinned for a passphrase that does not open
    res = cli(case.env, *args, "--passphrase-env", "HCBAK_TEST_PASSPHRASE")
    assert res.code == 0, res.err
    entry = load_config(Path(case.env["HCBAK_CONFIG"])).repositories["again"]
    assert entry.repo_id == _doc(case.repo)["repo_id"]


def test_job_run_refuses_a_config_that_switched_encryption_off(case: Setup) -> None:
    packs = _pack_count(case.repo)
    _switch_encryption_off(case.repo)
    res = cli(case.env, "job", "run", "nightly")
    res.assert_clean()
    assert res.code == 6, res.err
    assert "is not encrypted, but the config has a passphrase for it" in res.err
    assert _pack_count(case.repo) == packs  # nothing was written in clear


def test_the_console_script_job_run_refuses_it_too(case: Setup) -> None:
    """The real program as cron starts it: `job run` takes its fast path (no Typer, the
    key derivation started early), which must check the pin as well."""
    _switch_encryption_off(case.repo)
    proc = subprocess.run(
        [*HCBAK, "job", "run", "nightly"],
        env={**os.environ, **case.env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 6, proc.stderr
    assert "is not encrypted, but the config has a passphrase for it" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_restore_and_points_list_refuse_it_too(case: Setup) -> None:
    _switch_encryption_off(case.repo)
    for args in (
        ("points", "list", "--repo", "main"),
        ("restore", "disk", "web01@latest", "--disk", "0", "--to", str(case.tmp / "x.raw")),
    ):
        res = cli(case.env, *args)
        res.assert_clean()
        assert res.code == 6, (args, res.err)
        assert "is not encrypted, but the config has a passphrase" in res.err


def test_an_old_config_entry_without_a_pin_still_refuses_a_cleartext_repository(
    case: Setup,
) -> None:
    config = load_config(Path(case.env["HCBAK_CONFIG"]))
    config.repositories["main"].repo_id = None  # written before hcbak pinned ids
    save_config(config)
    _switch_encryption_off(case.repo)
    res = cli(case.env, "job", "run", "nightly")
    res.assert_clean()
    assert res.code == 6, res.err
    assert "refusing to read or write it in clear" in res.err


def test_another_repositorys_config_is_refused_by_its_id(case: Setup) -> None:
    other = case.tmp / "other"
    shutil.rmtree(other, ignore_errors=True)
    init_repo(other, passphrase=Secret(PASSPHRASE), block_size=256 << 10)
    shutil.copy(other / "config", case.repo / "config")  # same passphrase, other id
    res = cli(case.env, "job", "run", "nightly")
    res.assert_clean()
    assert res.code == 6, res.err
    assert f"has id {_doc(other)['repo_id']}, but the config pins" in res.err


# --- item 4: settings authenticated with the key ---------------------------------------
@pytest.mark.parametrize(
    ("field", "value"), [("compression", "none"), ("block_size", 512 << 10), ("created", "x")]
)
def test_settings_changed_without_the_key_fail_the_mac(
    case: Setup, field: str, value: object
) -> None:
    doc = _doc(case.repo)
    doc[field] = value
    _write_with_checksum(case.repo, doc)
    res = cli(case.env, "points", "list", "--repo", "main")
    res.assert_clean()
    assert res.code == 6, res.err
    assert "fails authentication" in res.err


# --- item 8: damaged key material is damage, a wrong passphrase is not ------------------
@pytest.mark.parametrize("field", ["wrapped_key", "salt", "repo_id"])
def test_damaged_key_material_is_exit_6_not_wrong_passphrase(case: Setup, field: str) -> None:
    doc = _doc(case.repo)
    section = doc if field == "repo_id" else doc["encryption"]
    assert isinstance(section, dict)
    text = section[field]
    section[field] = text[:10] + ("0" if text[10] != "0" else "1") + text[11:]
    (case.repo / "config").write_text(json.dumps(doc, indent=2))  # checksum left as it was
    res = cli(case.env, "points", "list", "--repo", "main")
    res.assert_clean()
    assert res.code == 6, res.err
    assert "is damaged" in res.err and "passphrase" not in res.err


def test_a_wrong_passphrase_is_still_exit_4(case: Setup) -> None:
    res = cli({**case.env, "HCBAK_TEST_PASSPHRASE": "not it"}, "points", "list", "--repo", "main")
    res.assert_clean()
    assert res.code == 4, res.err
    assert "wrong passphrase" in res.err


def test_v1_key_material_damage_that_is_not_hex_is_exit_6(tmp_path: Path) -> None:
    """v1 has no checksum: a flipped hex digit reads as a wrong passphrase (its hint
    says so), but damage that breaks a field's form is reported as damage."""
    repo = tmp_path / "golden-v1"
    shutil.copytree(GOLDEN_V1, repo)
    doc = _doc(repo)
    doc["encryption"]["salt"] = "zz" + doc["encryption"]["salt"][2:]  # type: ignore[index]
    (repo / "config").write_text(json.dumps(doc))
    with pytest.raises(IntegrityError, match=r"encryption\.salt is invalid"):
        open_repo(repo, passphrase=Secret("golden-v1 passphrase"), lock=None).__enter__()


# --- item 5: key derivation -------------------------------------------------------------
def test_new_repositories_use_argon2id_at_owasp_parameters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(WEAKEN_ENV)
    init_repo(tmp_path / "r", passphrase=PASS)
    enc = _doc(tmp_path / "r")["encryption"]
    assert isinstance(enc, dict)
    assert (enc["kdf"], enc["memory_kib"], enc["iterations"], enc["lanes"]) == (
        "argon2id",
        47104,
        1,
        1,
    )
    with open_repo(tmp_path / "r", passphrase=PASS, lock=None) as repo:
        assert repo.config.version == 3  # v2's config; sparse manifests (issue 21)


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"memory_kib": 16 * 1024}, "memory 16384 KiB is below"),
        ({"memory_kib": 19 * 1024, "iterations": 1}, "memory x passes is below"),
    ],
)
def test_a_v2_config_below_the_kdf_floor_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, changes: dict[str, int], why: str
) -> None:
    root = make_repo(tmp_path / "r")
    doc = _doc(root)
    doc["encryption"].update(changes)  # type: ignore[union-attr]
    _write_with_checksum(root, doc)
    monkeypatch.delenv(WEAKEN_ENV)
    with pytest.raises(IntegrityError, match=why):
        open_repo(root, passphrase=PASS, lock=None).__enter__()


def test_a_v1_config_below_the_scrypt_floor_is_refused_and_golden_v1_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "golden-v1"
    shutil.copytree(GOLDEN_V1, repo)
    monkeypatch.delenv(WEAKEN_ENV)
    with open_repo(repo, passphrase=Secret("golden-v1 passphrase"), lock=None):
        pass  # N=2^15, r=8: what every v1 repository was created with
    doc = _doc(repo)
    doc["encryption"]["n"] = 1 << 14  # type: ignore[index]
    (repo / "config").write_text(json.dumps(doc))
    with pytest.raises(IntegrityError, match="scrypt N=16384, r=8 is below"):
        open_repo(repo, passphrase=Secret("golden-v1 passphrase"), lock=None).__enter__()


# --- item 6: block ids ------------------------------------------------------------------
def test_v2_block_ids_are_keyed_blake3_and_unencrypted_v1_ids_stay_xxh3(tmp_path: Path) -> None:
    import blake3
    import xxhash

    data = b"block " * 50000
    root = make_repo(tmp_path / "v2", encrypted=False)
    key = bytes.fromhex(str(_doc(root)["id_key"]))
    with open_repo(root, lock=None) as repo:
        assert repo.block_id(data) == blake3.blake3(data, key=key).digest(16)
    v1 = tmp_path / "v1"
    init_repo(v1, block_size=256 << 10, version=1)
    seed = _doc(v1)["id_seed"]
    with open_repo(v1, lock=None) as repo:
        assert repo.block_id(data) == xxhash.xxh3_128_digest(data, seed=seed)


def test_an_encrypted_v2_repository_keeps_its_id_key_inside_the_wrapped_key(
    tmp_path: Path,
) -> None:
    root = make_repo(tmp_path / "r")
    doc = _doc(root)
    assert "id_key" not in doc and "id_seed" not in doc and doc["id_hash"] == "blake3-keyed-128"
    with open_repo(root, passphrase=PASS, lock=None) as repo:
        a, b = repo.block_id(b"x" * 4096), repo.block_id(b"y" * 4096)
    with open_repo(make_repo(tmp_path / "r2"), passphrase=PASS, lock=None) as other:
        assert other.block_id(b"x" * 4096) != a != b  # a key per repository


# --- a reader refuses a cleartext object in an encrypted repository --------------------
def test_a_cleartext_blob_in_an_encrypted_repository_is_refused(tmp_path: Path) -> None:
    data = b"planted " * 32768
    with open_repo(make_repo(tmp_path / "r"), passphrase=PASS, lock=None) as repo:
        bid = repo.block_id(data)
        frame = frame_blob(bid, 0, CODEC_NONE, len(data), data)
        with pytest.raises(IntegrityError, match="stored in clear in an encrypted repository"):
            repo.decode_frame(bid, frame)


def test_passwd_keeps_the_version_and_a_wrong_old_passphrase_is_refused(tmp_path: Path) -> None:
    from hcbak.repo.opening import set_passphrase

    root = make_repo(tmp_path / "r")
    with pytest.raises(PassphraseError):
        set_passphrase(root, Secret("not it"), Secret("new"))
    set_passphrase(root, PASS, Secret("new"))
    assert _doc(root)["version"] == 3
    with open_repo(root, passphrase=Secret("new"), lock=None) as repo:
        assert repo.config.encrypted


def test_a_pinned_unencrypted_entry_refuses_an_encrypted_repository(tmp_path: Path) -> None:
    """Pinned: exit 6. Unpinned (an old entry): the old answer, no passphrase given."""
    from hcbak.repo.settings import Expected

    root = make_repo(tmp_path / "r")
    repo_id = str(_doc(root)["repo_id"])
    with pytest.raises(IntegrityError, match="pins it as unencrypted"):
        open_repo(root, lock=None, expect=Expected(False, repo_id)).__enter__()
    with pytest.raises(PassphraseError, match="no passphrase was given"):
        open_repo(root, lock=None, expect=Expected(False)).__enter__()


def test_a_v1_repository_stays_v1_and_writable_through_passwd(tmp_path: Path) -> None:
    from hcbak.repo.opening import set_passphrase

    root = tmp_path / "v1"
    init_repo(root, passphrase=PASS, block_size=256 << 10, version=1)
    data = b"v1 block " * 30000
    with open_repo(root, passphrase=PASS, lock=None) as repo:
        bid = repo.block_id(data)
        repo.put_block(bid, data)
    set_passphrase(root, PASS, Secret("new"))
    doc = _doc(root)
    assert doc["version"] == 1 and "checksum" not in doc
    assert doc["encryption"]["kdf"] == "scrypt"  # type: ignore[index]
    with open_repo(root, passphrase=Secret("new"), lock=None) as repo:
        assert repo.get_block(bid) == data and repo.block_id(data) == bid
