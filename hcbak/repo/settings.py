"""The repository `config` file: format version, id, block size, compression, keys.

It is a small JSON document (not content-addressed: `repo passwd` replaces it through
the atomic-write helper). When the repository is encrypted the block-id seed lives only
inside the wrapped key, so ids reveal nothing without the passphrase.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hcbak.errors import IntegrityError, PassphraseError, RepoError
from hcbak.repo import fsio
from hcbak.repo.kdf import KdfParams
from hcbak.secrets import Secret

if TYPE_CHECKING:
    from hcbak.repo.crypto import KeyMaterial

FORMAT_NAME = "hcbak-repository"
FORMAT_VERSION = 1
MIN_BLOCK = 256 * 1024
MAX_BLOCK = 4 * 1024 * 1024


@dataclass(frozen=True)
class RepoSettings:
    """The repository's format settings, read from its `config` file."""

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
        from hcbak.repo.crypto import wrap_key  # cryptography: imported when needed

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
    except OSError as exc:
        raise RepoError(f"repository config {path} is unreadable: {exc.strerror or exc}")
    except ValueError as exc:  # not UTF-8 or not JSON: damaged, or somebody else's file
        what = "not UTF-8" if isinstance(exc, UnicodeDecodeError) else "not valid JSON"
        raise IntegrityError(
            f"repository config {path} is damaged or not an hcbak config ({what})",
            hint="restore the config file from a copy: without it the data cannot be read",
        )
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        raise RepoError(f"{path} is not an hcbak repository config")
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise RepoError(f"repository config field version is invalid: {version!r}")
    if version > FORMAT_VERSION:
        raise RepoError(
            f"repository format version {doc['version']} is newer than this hcbak supports",
            hint="upgrade hcbak",
        )
    return doc


def load_settings(
    root: Path, passphrase: Secret | None
) -> tuple[RepoSettings, KeyMaterial | None, int]:
    """Returns (settings, key material or None when unencrypted, id seed).

    `config` has no checksum of its own: every field is validated here so damage is
    refused with a RepoError naming the field, never a crash in a decoder.
    """
    doc = read_config_doc(root)
    enc = doc.get("encryption")
    settings = RepoSettings(
        repo_id=_field(doc, "repo_id", str),
        block_size=_field(doc, "block_size", int),
        compression=_field(doc, "compression", str),
        encrypted=enc is not None,
        version=_field(doc, "version", int),
        created=str(doc.get("created", "")),
    )
    if settings.compression not in ("lz4", "zstd", "none"):
        raise _bad("compression", settings.compression)
    try:
        validate_block_size(settings.block_size)
    except RepoError:
        raise _bad("block_size", settings.block_size)
    if enc is None:
        seed = _field(doc, "id_seed", int)
        if not 0 <= seed < 1 << 64:
            raise _bad("id_seed", seed)
        return settings, None, seed
    if not isinstance(enc, dict):
        raise _bad("encryption", enc)
    if enc.get("cipher") != "aes-256-gcm":
        raise _bad("encryption.cipher", enc.get("cipher"))
    if enc.get("kdf") != "scrypt":
        raise _bad("encryption.kdf", enc.get("kdf"))
    kdf = kdf_from(enc)
    wrapped = _hex_field(enc, "wrapped_key")
    if len(wrapped) != WRAPPED_KEY_LEN:
        raise _bad("encryption.wrapped_key", "(wrong length)")
    if passphrase is None:
        raise PassphraseError(
            f"repository {root} is encrypted and no passphrase was given",
            hint="set the repository's passphrase reference in the config",
        )
    from hcbak.repo.crypto import unwrap_key  # cryptography: imported when needed

    material = unwrap_key(wrapped, passphrase, kdf, settings.repo_id)
    return settings, material, material.id_seed


# nonce + (32-byte master key + 8-byte seed) + GCM tag
WRAPPED_KEY_LEN = 12 + 40 + 16


def kdf_from(enc: dict[str, Any]) -> KdfParams:
    n, r, p = (_field(enc, k, int, "encryption.") for k in ("n", "r", "p"))
    if n < 2 or n & (n - 1) or n > 1 << 22:
        raise _bad("encryption.n", n)
    if not 1 <= r <= 64:
        raise _bad("encryption.r", r)
    if not 1 <= p <= 16:
        raise _bad("encryption.p", p)
    salt = _hex_field(enc, "salt")
    if not 8 <= len(salt) <= 64:
        raise _bad("encryption.salt", "(wrong length)")
    return KdfParams(n, r, p, salt)


def _bad(name: str, value: object) -> RepoError:
    shown = value if isinstance(value, int | str) and len(str(value)) < 40 else "(invalid)"
    return RepoError(
        f"repository config field {name} is invalid: {shown!r}",
        hint="the repository's config file is damaged; restore it from a copy",
    )


def _field(doc: dict[str, Any], key: str, kind: type, prefix: str = "") -> Any:
    value = doc.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise _bad(prefix + key, value)
    return value


def _hex_field(enc: dict[str, Any], key: str) -> bytes:
    value = _field(enc, key, str, "encryption.")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise _bad("encryption." + key, "(not hex)")


def write_config(root: Path, data: bytes) -> None:
    fsio.atomic_write(root / "config", data)
