"""Starting the key derivation early: the open takes that result, or derives its own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from repo_helpers import PASS, make_repo

from hcbak.errors import PassphraseError
from hcbak.repo import kdf, open_repo
from hcbak.secrets import Secret


@pytest.fixture
def started(tmp_path: Path, scrypt_calls: list[str]) -> Path:
    """An encrypted repository whose key derivation was started early."""
    root = make_repo(tmp_path / "r")
    scrypt_calls.clear()  # init_repo's own
    kdf.derive_early(root, PASS)
    return root


def test_the_open_takes_the_early_derivation_instead_of_a_second_scrypt(
    started: Path, scrypt_calls: list[str]
) -> None:
    root = started
    with open_repo(root, passphrase=PASS, lock="shared", command="t") as repo:
        assert repo.config.encrypted
    assert scrypt_calls == ["hcbak-kdf"]
    assert not kdf._early  # taken, not kept


def test_a_different_passphrase_never_takes_the_early_result(
    started: Path, scrypt_calls: list[str]
) -> None:
    root = started
    with pytest.raises(PassphraseError):
        open_repo(root, passphrase=Secret("wrong"), lock="shared", command="t").__enter__()
    assert len(scrypt_calls) == 2
    with open_repo(root, passphrase=PASS, lock="shared", command="t"):
        pass
    assert len(scrypt_calls) == 2  # the right passphrase still found its early result


@pytest.mark.parametrize("kind", ["missing", "unencrypted", "damaged"])
def test_nothing_starts_where_there_is_nothing_to_derive(
    tmp_path: Path, scrypt_calls: list[str], kind: str
) -> None:
    root = tmp_path / "r"
    if kind == "unencrypted":
        make_repo(root, encrypted=False)
    elif kind == "damaged":
        make_repo(root)
        (root / "config").write_text("{not json")
    scrypt_calls.clear()  # init_repo's own
    kdf.derive_early(root, PASS)  # never raises: the open reports what is wrong
    assert scrypt_calls == [] and not kdf._early


def test_starting_the_derivation_imports_no_codec_and_no_repository(tmp_path: Path) -> None:
    """It runs before `job run` imports the engine; the heavy imports come later. Only
    `cryptography` (Argon2id, ~12 ms, which the open needs for AES-GCM anyway) is
    imported, by the helper thread."""
    root = make_repo(tmp_path / "r")
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from hcbak.repo.kdf import derive_early\n"
        "from hcbak.secrets import Secret\n"
        f"derive_early(Path({str(root)!r}), Secret('x'))\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    loaded = set(proc.stdout.split())
    assert "hcbak.repo.kdf" in loaded, proc.stderr
    heavy = {"lz4", "hcbak.repo.codec", "hcbak.repo.repository", "hcbak.repo.blockstore", "blake3"}
    assert not heavy & loaded
