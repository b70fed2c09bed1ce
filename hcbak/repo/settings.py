"""The repository `config` file: format version, id, block size, compression, keys;
its checksum and settings MAC (format v2), and what hcbak's own config pins.

It is a small JSON document (not content-addressed: `repo passwd` replaces it with an
atomic put of the storage backend). When the repository is encrypted the block-id
secret lives only inside the wrapped key, so ids reveal nothing without the passphrase.

Format v2 adds two fields (docs/format.md, "config"): `checksum`, a sha256 over every
other field, so damage anywhere (a flipped bit in the wrapped key, the salt or the id)
is reported as damage (exit 6) instead of "wrong passphrase"; and, when encrypted,
`settings_mac`, an HMAC keyed from the master key over every setting, so nobody
without the passphrase can change a setting unnoticed. Switching encryption off is
caught by the pin (`Expected`): hcbak's config knows the repository is encrypted.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hcbak.errors import HcbakError, IntegrityError, PassphraseError, RepoError
from hcbak.repo.ids import ID_HASH_V2, BlockIdFn, blake3_ids, xxh3_ids
from hcbak.repo.kdf import Argon2Params, KdfParams, ScryptParams, below_floor, start_early
from hcbak.repo.storage import Location, ObjectMissingError, ObjectStore, open_store
from hcbak.repo.storage.base import object_name
from hcbak.secrets import Secret

if TYPE_CHECKING:
    from hcbak.config import RepoConfig
    from hcbak.repo.crypto import KeyMaterial

FORMAT_NAME = "hcbak-repository"
FORMAT_VERSION = 3  # what `init` writes; every version up to it is read (and written)
KNOWN_VERSIONS = (1, 2, 3)
# Version 3 is version 2's config; only its point manifests may use maps version 2
# (sparse: hcbak/repo/points.py), which hcbak before issue 21 cannot read. A v1 or v2
# repository keeps manifest version 1, so every hcbak that opens it reads its points.
SPARSE_MANIFESTS_FROM = 3
ID_HASH_V1 = "xxh3-128-seeded"
MIN_BLOCK = 256 * 1024
MAX_BLOCK = 4 * 1024 * 1024
_UNSIGNED = ("checksum", "settings_mac")  # the fields the canonical form leaves out
CONFIG_KEY = "config"


@dataclass(frozen=True)
class RepoSettings:
    """The repository's format settings, read from its `config` file."""

    repo_id: str
    block_size: int
    compression: str
    encrypted: bool
    version: int = FORMAT_VERSION
    created: str = ""

    @property
    def id_hash(self) -> str:
        return ID_HASH_V1 if self.version < 2 else ID_HASH_V2


@dataclass(frozen=True)
class Expected:
    """What hcbak's own config says about a repository: encrypted (it has a passphrase
    reference) or not, and its id (recorded by `repo add`; None in entries written
    before hcbak pinned ids). A repository that differs is refused, exit 6."""

    encrypted: bool
    repo_id: str | None = None

    @classmethod
    def of(cls, entry: RepoConfig) -> Expected:
        """What a config entry pins: encrypted when it has a passphrase reference."""
        return cls(encrypted=entry.encrypted, repo_id=entry.repo_id)


def validate_block_size(block_size: int) -> None:
    if not MIN_BLOCK <= block_size <= MAX_BLOCK or block_size % 4096:
        raise RepoError(
            f"block size {block_size} is not supported",
            hint="use 256KiB..4MiB, a multiple of 4 KiB (default 1MiB)",
        )


def canonical(doc: dict[str, Any], leave_out: tuple[str, ...] = _UNSIGNED) -> bytes:
    """The bytes the checksum and the MAC cover: the JSON object without `leave_out`,
    keys sorted, no whitespace, non-ASCII escaped (every value hcbak writes is ASCII)."""
    kept = {k: v for k, v in doc.items() if k not in leave_out}
    return json.dumps(kept, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def encode_config(
    settings: RepoSettings,
    material: KeyMaterial,
    passphrase: Secret | None,
    kdf: KdfParams | None,
) -> bytes:
    version = settings.version
    doc: dict[str, Any] = {
        "format": FORMAT_NAME,
        "version": version,
        "repo_id": settings.repo_id,
        "created": settings.created,
        "block_size": settings.block_size,
        "compression": settings.compression,
        "encryption": None,
    }
    if version >= 2:
        doc["id_hash"] = ID_HASH_V2
    if passphrase is None or kdf is None:
        if version >= 2:
            doc["id_key"] = material.id_secret.hex()
        else:
            doc["id_seed"] = material.id_seed
    else:
        from hcbak.repo.crypto import wrap_key  # cryptography: imported when needed

        doc["encryption"] = {"cipher": "aes-256-gcm", **_kdf_fields(kdf)}
        wrapped = wrap_key(material, passphrase, kdf, settings.repo_id, version)
        doc["encryption"]["wrapped_key"] = wrapped.hex()
        if version >= 2:
            doc["settings_mac"] = material.settings_mac(canonical(doc)).hex()
    if version >= 2:
        doc["checksum"] = hashlib.sha256(canonical(doc, ("checksum",))).hexdigest()
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def _kdf_fields(kdf: KdfParams) -> dict[str, Any]:
    if isinstance(kdf, Argon2Params):
        return {
            "kdf": "argon2id",
            "memory_kib": kdf.memory_kib,
            "iterations": kdf.iterations,
            "lanes": kdf.lanes,
            "salt": kdf.salt.hex(),
        }
    return {"kdf": "scrypt", "n": kdf.n, "r": kdf.r, "p": kdf.p, "salt": kdf.salt.hex()}


def read_config_doc(location: Location) -> dict[str, Any]:
    """The config document, checked for its format, version and (v2) checksum."""
    store = open_store(location)
    path = object_name(store, CONFIG_KEY)
    try:
        doc = json.loads(store.get(CONFIG_KEY))
    except ObjectMissingError:
        raise RepoError(f"{store.location} is not an hcbak repository (no config file)")
    except RepoError as exc:
        raise RepoError(f"repository config is unreadable: {exc.message}")
    except ValueError as exc:  # not UTF-8 or not JSON: damaged, or somebody else's file
        what = "not UTF-8" if isinstance(exc, UnicodeDecodeError) else "not valid JSON"
        raise _damaged(path, what)
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
    if version >= 2:
        stored = doc.get("checksum")
        if stored != hashlib.sha256(canonical(doc, ("checksum",))).hexdigest():
            raise _damaged(path, "its checksum does not match" if stored else "no checksum")
    return doc


def _damaged(path: str, what: str) -> IntegrityError:
    return IntegrityError(
        f"repository config {path} is damaged or not an hcbak config ({what})",
        hint="restore the config file from a copy: without it the data cannot be read",
    )


def load_settings(
    store: ObjectStore, passphrase: Secret | None, expect: Expected | None = None
) -> tuple[RepoSettings, KeyMaterial | None, BlockIdFn]:
    """Returns (settings, key material or None when unencrypted, the block-id function).

    Every field is validated here so damage is refused naming the field, never a crash
    in a decoder; `expect` is checked before any key derivation.
    """
    doc = read_config_doc(store)
    root = store.location
    version = doc["version"]
    enc = doc.get("encryption")
    settings = RepoSettings(
        repo_id=_field(doc, "repo_id", str),
        block_size=_field(doc, "block_size", int),
        compression=_field(doc, "compression", str),
        encrypted=enc is not None,
        version=version,
        created=str(doc.get("created", "")),
    )
    if len(settings.repo_id) != 32 or settings.repo_id.strip("0123456789abcdef"):
        raise _bad("repo_id", settings.repo_id)  # it names files in hcbak's state dir
    if settings.compression not in ("lz4", "zstd", "none"):
        raise _bad("compression", settings.compression)
    try:
        validate_block_size(settings.block_size)
    except RepoError:
        raise _bad("block_size", settings.block_size)
    if version >= 2 and doc.get("id_hash") != ID_HASH_V2:
        raise _bad("id_hash", doc.get("id_hash"))
    if expect is not None:
        check_expected(root, settings, expect)
    if enc is None:
        if version >= 2:
            return settings, None, blake3_ids(_hex_field(doc, "id_key", "", 32))
        seed = _field(doc, "id_seed", int)
        if not 0 <= seed < 1 << 64:
            raise _bad("id_seed", seed)
        return settings, None, xxh3_ids(seed)
    if not isinstance(enc, dict):
        raise _bad("encryption", enc)
    if enc.get("cipher") != "aes-256-gcm":
        raise _bad("encryption.cipher", enc.get("cipher"))
    kdf = kdf_from(enc, version)
    from hcbak.repo.crypto import unwrap_key, wrapped_len  # cryptography: when needed

    wrapped = _hex_field(enc, "wrapped_key", "encryption.", wrapped_len(version))
    if version >= 2:
        mac = _hex_field(doc, "settings_mac", "", 32)
    if passphrase is None:
        raise PassphraseError(
            f"repository {root} is encrypted and no passphrase was given",
            hint="set the repository's passphrase reference in the config",
        )
    material = unwrap_key(wrapped, passphrase, kdf, settings.repo_id, version)
    if version < 2:
        return settings, material, xxh3_ids(material.id_seed)
    if not hmac.compare_digest(material.settings_mac(canonical(doc)), mac):
        raise IntegrityError(
            f"repository config {object_name(store, CONFIG_KEY)} fails authentication: its "
            "settings were changed by someone without the key",
            hint="restore the config file from a copy; do not back up into this repository "
            "until you know who changed it",
        )
    return settings, material, blake3_ids(material.id_secret)


def check_expected(root: str, settings: RepoSettings, expect: Expected) -> None:
    """Refuse a repository that is not the one hcbak's config describes (exit 6): a
    replaced `config` must never turn an encrypted repository into a cleartext one."""
    hint = (
        "the repository's config file was replaced or the path points at another "
        "repository; restore the config from a copy, or if this change is intended, "
        "attach the repository again with `hcbak repo add NAME --path PATH --force`"
    )
    if expect.repo_id is not None and settings.repo_id != expect.repo_id:
        raise IntegrityError(
            f"repository {root} has id {settings.repo_id}, but the config pins {expect.repo_id}",
            hint=hint,
        )
    if expect.encrypted and not settings.encrypted:
        raise IntegrityError(
            f"repository {root} is not encrypted, but the config has a passphrase for it: "
            "refusing to read or write it in clear",
            hint=hint,
        )
    if not expect.encrypted and settings.encrypted and expect.repo_id is not None:
        raise IntegrityError(
            f"repository {root} is encrypted, but the config pins it as unencrypted",
            hint=hint,
        )


def kdf_from(enc: dict[str, Any], version: int) -> KdfParams:
    """The key-derivation parameters of an `encryption` object, checked for sanity and
    against the floor (kdf.below_floor)."""
    params: KdfParams
    if version >= 2:
        if enc.get("kdf") != "argon2id":
            raise _bad("encryption.kdf", enc.get("kdf"))
        m, t, p = (
            _field(enc, k, int, "encryption.") for k in ("memory_kib", "iterations", "lanes")
        )
        if not 1 <= p <= 64:
            raise _bad("encryption.lanes", p)
        if not 8 * p <= m <= 4 * 1024 * 1024:
            raise _bad("encryption.memory_kib", m)
        if not 1 <= t <= 64:
            raise _bad("encryption.iterations", t)
        params = Argon2Params(m, t, p, _salt(enc))
    else:
        if enc.get("kdf") != "scrypt":
            raise _bad("encryption.kdf", enc.get("kdf"))
        n, r, p = (_field(enc, k, int, "encryption.") for k in ("n", "r", "p"))
        if n < 2 or n & (n - 1) or n > 1 << 22:
            raise _bad("encryption.n", n)
        if not 1 <= r <= 64:
            raise _bad("encryption.r", r)
        if not 1 <= p <= 16:
            raise _bad("encryption.p", p)
        params = ScryptParams(n, r, p, _salt(enc))
    weak = below_floor(params)
    if weak is not None:
        raise IntegrityError(
            f"repository config asks for a key derivation weaker than hcbak accepts: {weak}",
            hint="the config was damaged or tampered with; restore it from a copy "
            "(docs/format.md, Key derivation)",
        )
    return params


def _salt(enc: dict[str, Any]) -> bytes:
    salt = _hex_field(enc, "salt", "encryption.")
    if not 8 <= len(salt) <= 64:
        raise _bad("encryption.salt", "(wrong length)")
    return salt


def _bad(name: str, value: object) -> IntegrityError:
    shown = value if isinstance(value, int | str) and len(str(value)) < 40 else "(invalid)"
    return IntegrityError(
        f"repository config field {name} is invalid: {shown!r}",
        hint="the repository's config file is damaged; restore it from a copy",
    )


def _field(doc: dict[str, Any], key: str, kind: type, prefix: str = "") -> Any:
    value = doc.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise _bad(prefix + key, value)
    return value


def _hex_field(doc: dict[str, Any], key: str, prefix: str, length: int | None = None) -> bytes:
    value = _field(doc, key, str, prefix)
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise _bad(prefix + key, "(not hex)")
    if length is not None and len(raw) != length:
        raise _bad(prefix + key, "(wrong length)")
    return raw


def write_config(store: ObjectStore, data: bytes) -> None:
    """Write (or replace, atomically) the config: the last write of init_repo."""
    store.put(CONFIG_KEY, data)


def derive_early(location: Location, passphrase: Secret) -> None:
    """Start deriving the key of the repository at `location` in a helper thread (kdf.py).

    Best effort: when the config cannot be read, the repository is not encrypted or
    its parameters are refused, nothing starts, and opening the repository reports
    whatever is wrong.
    """
    try:
        doc = read_config_doc(location)
        enc = doc.get("encryption")
        params = kdf_from(enc, doc["version"]) if isinstance(enc, dict) else None
    except HcbakError:  # missing, damaged, foreign: the open says which
        return
    if params is not None:
        start_early(passphrase, params)
