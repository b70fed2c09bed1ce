"""Encryption: AES-256-GCM with a random master key wrapped by a key derived from the
passphrase (Argon2id in format v2, scrypt in v1), and the settings MAC (v2).

Every blob, index segment and manifest section is sealed with a fresh random 96-bit
nonce; the associated data binds what the ciphertext is (a blob's id, a point's id), so
an attacker with write access cannot swap one blob or manifest for another unnoticed.
Random nonces stay safe for ~2^32 seals per key (NIST SP 800-38D), i.e. billions of
blocks. The passphrase only wraps the master key, so `repo passwd` rewrites one file.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hcbak.errors import IntegrityError, PassphraseError
from hcbak.repo.kdf import KEY_LEN, KdfParams, derive_kek
from hcbak.secrets import Secret

NONCE_LEN = 12
TAG_LEN = 16
# The block-id secret: v1 an xxh3 seed (u64), v2 a keyed-BLAKE3 key.
ID_SECRET_LEN = {1: 8, 2: 32, 3: 32}
_SETTINGS_MAC_KEY_INFO = b"hcbak-settings-mac-key-v2"


def _key_ad(version: int, repo_id: str) -> bytes:
    return f"hcbak-master-key-v{version}:{repo_id}".encode()


@dataclass(frozen=True)
class KeyMaterial:
    """What the passphrase protects: the AES master key and the block-id secret
    (v1: the xxh3 seed as u64 little-endian; v2: the 32-byte BLAKE3 key)."""

    master_key: bytes
    id_secret: bytes

    @property
    def id_seed(self) -> int:
        """The v1 xxh3 seed."""
        value: int = struct.unpack("<Q", self.id_secret)[0]
        return value

    def to_bytes(self) -> bytes:
        return self.master_key + self.id_secret

    @classmethod
    def from_bytes(cls, data: bytes, version: int) -> KeyMaterial:
        if len(data) != KEY_LEN + ID_SECRET_LEN[version]:
            raise IntegrityError("the wrapped key in the repository config is malformed")
        return cls(data[:KEY_LEN], data[KEY_LEN:])

    @classmethod
    def generate(cls, version: int) -> KeyMaterial:
        return cls(os.urandom(KEY_LEN), os.urandom(ID_SECRET_LEN[version]))

    def settings_mac(self, canonical: bytes) -> bytes:
        """HMAC-SHA256 of the canonical settings under a key derived from the master key
        (never the master key itself: that one only ever keys AES-GCM)."""
        mac_key = hmac.new(self.master_key, _SETTINGS_MAC_KEY_INFO, hashlib.sha256).digest()
        return hmac.new(mac_key, canonical, hashlib.sha256).digest()


def wrapped_len(version: int) -> int:
    """nonce + (master key + id secret) + GCM tag."""
    return NONCE_LEN + KEY_LEN + ID_SECRET_LEN[version] + TAG_LEN


def wrap_key(
    material: KeyMaterial, passphrase: Secret, params: KdfParams, repo_id: str, version: int
) -> bytes:
    nonce = os.urandom(NONCE_LEN)
    kek = derive_kek(passphrase, params)
    return nonce + AESGCM(kek).encrypt(nonce, material.to_bytes(), _key_ad(version, repo_id))


def unwrap_key(
    wrapped: bytes, passphrase: Secret, params: KdfParams, repo_id: str, version: int
) -> KeyMaterial:
    """A failed tag means a wrong passphrase. In v2 the config's checksum was checked
    before (damage to the key material is reported as damage, exit 6); in v1 a damaged
    wrapped key, salt or repository id fails the tag the same way, and the hint says so."""
    kek = derive_kek(passphrase, params)
    try:
        plain = AESGCM(kek).decrypt(
            wrapped[:NONCE_LEN], wrapped[NONCE_LEN:], _key_ad(version, repo_id)
        )
    except InvalidTag:
        hint = "check the passphrase reference in the config (env var, file or command)"
        if version < 2:
            hint += (
                "; if it is right, the key material in the repository config (wrapped key, "
                "salt or repository id) is damaged: a v1 config cannot tell the two apart"
            )
        raise PassphraseError("wrong passphrase for this encrypted repository", hint=hint)
    return KeyMaterial.from_bytes(plain, version)


class Sealer:
    """Seal/open byte strings with AES-256-GCM; `None` key means no encryption."""

    def __init__(self, master_key: bytes | None) -> None:
        self._aead = AESGCM(master_key) if master_key is not None else None

    @property
    def encrypted(self) -> bool:
        return self._aead is not None

    def seal(self, plain: bytes, ad: bytes) -> bytes:
        return b"".join(self.seal_parts(plain, ad))

    def seal_parts(self, plain: bytes, ad: bytes) -> list[bytes]:
        """`seal` as pieces to write one after another (nonce, ciphertext+tag): blocks
        are MiBs, and joining them would copy every block once more under the GIL."""
        if self._aead is None:
            return [plain]
        nonce = os.urandom(NONCE_LEN)
        return [nonce, self._aead.encrypt(nonce, plain, ad)]

    def open(self, stored: bytes | memoryview, ad: bytes, what: str) -> bytes | memoryview:
        if self._aead is None:
            return stored
        try:
            return self._aead.decrypt(stored[:NONCE_LEN], stored[NONCE_LEN:], ad)
        except InvalidTag:
            raise IntegrityError(f"{what} failed authentication (corrupt or tampered)")
