"""Encryption: AES-256-GCM with a random master key wrapped by scrypt(passphrase).

Every blob, index segment and manifest section is sealed with a fresh random 96-bit
nonce; the associated data binds what the ciphertext is (a blob's id, a point's id), so
an attacker with write access cannot swap one blob or manifest for another unnoticed.
Random nonces stay safe for ~2^32 seals per key (NIST SP 800-38D), i.e. billions of
blocks. The passphrase only wraps the master key, so `repo passwd` rewrites one file.
"""

from __future__ import annotations

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
_KEY_AD = b"hcbak-master-key-v1:"


@dataclass(frozen=True)
class KeyMaterial:
    """What the passphrase protects: the AES master key and the block-id seed."""

    master_key: bytes
    id_seed: int

    def to_bytes(self) -> bytes:
        return self.master_key + struct.pack("<Q", self.id_seed)

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyMaterial:
        if len(data) != KEY_LEN + 8:
            raise PassphraseError("the wrapped key in the repository config is malformed")
        return cls(data[:KEY_LEN], struct.unpack("<Q", data[KEY_LEN:])[0])

    @classmethod
    def generate(cls) -> KeyMaterial:
        return cls(os.urandom(KEY_LEN), struct.unpack("<Q", os.urandom(8))[0])


def wrap_key(material: KeyMaterial, passphrase: Secret, params: KdfParams, repo_id: str) -> bytes:
    nonce = os.urandom(NONCE_LEN)
    kek = derive_kek(passphrase, params)
    return nonce + AESGCM(kek).encrypt(nonce, material.to_bytes(), _KEY_AD + repo_id.encode())


def unwrap_key(wrapped: bytes, passphrase: Secret, params: KdfParams, repo_id: str) -> KeyMaterial:
    kek = derive_kek(passphrase, params)
    try:
        plain = AESGCM(kek).decrypt(
            wrapped[:NONCE_LEN], wrapped[NONCE_LEN:], _KEY_AD + repo_id.encode()
        )
    except InvalidTag:
        raise PassphraseError(
            "wrong passphrase for this encrypted repository",
            hint="check the passphrase reference in the config (env var, file or command); "
            "if it is right, the wrapped key in the repository config is damaged",
        )
    return KeyMaterial.from_bytes(plain)


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
