"""The repository `config` file: format version, id, block size, compression, keys.

It is a small JSON document (not content-addressed: `repo passwd` replaces it through
the atomic-write helper). When the repository is encrypted the block-id seed lives only
inside the wrapped key, so ids reveal nothing without the passphrase.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hcbak.errors import PassphraseError, RepoError
from hcbak.repo import fsio
from hcbak.repo.crypto import KdfParams, KeyMaterial, unwrap_key, wrap_key
from hcbak.secrets import Secret

FORMAT_NAME = "hcbak-repository"
FORMAT_VERSION = 1
MIN_BLOCK = 256 * 1024
MAX_BLOCK = 4 * 1024 * 1024


@dataclass(frozen=True)
class RepoSettings:
    repo_id: str
    block_size: int
    compression: str
    encrypted: bool
    version: int = FORMAT_VERSION
    created: str = ""


def validate_block_size(block_size: int) -> None:
    if not MIN_BLOCK <= block_size <= MAX_BLOCK or block_size % 4096:
        raise RepoError(
            f"block size {block_size} is not supported",
            hint="use 256KiB..4MiB, a multiple of 4 KiB (default 1MiB)",
        )


def encode_config(
    settings: RepoSettings,
    material: KeyMaterial,
    passphrase: Secret | None,
    kdf: KdfParams | None,
) -> bytes:
    doc: dict[str, Any] = {
        "format": FORMAT_NAME,
        "version": settings.version,
        "repo_id": settings.repo_id,
        "created": settings.created,
        "block_size": settings.block_size,
        "compression": settings.compression,
        "encryption": None,
    }
    if passphrase is None or kdf is None:
        doc["id_seed"] = material.id_seed
    else:
        doc["encryption"] = {
            "cipher": "aes-256-gcm",
            "kdf": "scrypt",
            "n": kdf.n,
            "r": kdf.r,
            "p": kdf.p,
            "salt": kdf.salt.hex(),
            "wrapped_key": wrap_key(material, passphrase, kdf, settings.repo_id).hex(),
        }
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def read_config_doc(root: Path) -> dict[str, Any]:
    path = root / "config"
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise RepoError(f"{root} is not an hcbak repository (no config file)")
    except (OSError, ValueError) as exc:
        raise RepoError(f"repository config {path} is unreadable: {exc}")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        raise RepoError(f"{path} is not an hcbak repository config")
    if int(doc.get("version", 0)) > FORMAT_VERSION:
        raise RepoError(
            f"repository format version {doc['version']} is newer than this hcbak supports",
            hint="upgrade hcbak",
        )
    return doc


def load_settings(
    root: Path, passphrase: Secret | None
) -> tuple[RepoSettings, KeyMaterial | None, int]:
    """Returns (settings, key material or None when unencrypted, id seed)."""
    doc = read_config_doc(root)
    enc = doc.get("encryption")
    settings = RepoSettings(
        repo_id=str(doc["repo_id"]),
        block_size=int(doc["block_size"]),
        compression=str(doc["compression"]),
        encrypted=enc is not None,
        version=int(doc["version"]),
        created=str(doc.get("created", "")),
    )
    if enc is None:
        return settings, None, int(doc["id_seed"])
    if passphrase is None:
        raise PassphraseError(
            f"repository {root} is encrypted and no passphrase was given",
            hint="set the repository's passphrase reference in the config",
        )
    material = unwrap_key(
        bytes.fromhex(enc["wrapped_key"]), passphrase, kdf_from(enc), settings.repo_id
    )
    return settings, material, material.id_seed


def kdf_from(enc: dict[str, Any]) -> KdfParams:
    return KdfParams(int(enc["n"]), int(enc["r"]), int(enc["p"]), bytes.fromhex(enc["salt"]))


def write_config(root: Path, data: bytes) -> None:
    fsio.atomic_write(root / "config", data)
