"""The passphrase's key-encryption key: scrypt, and starting it before it is needed.

A backup run knows its repository and passphrase ~0.2 s before it opens the
repository (it still imports the CLI and the engine, and logs in). `derive_early`
starts the scrypt then, in a helper thread (hashlib releases the GIL), and
`derive_kek` takes that result instead of computing it again. Only stdlib imports
here, so starting it costs no import time.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from hcbak.secrets import Secret

KEY_LEN = 32
# scrypt cost: N=2^15, r=8, p=1 (~32 MiB, ~0.1 s): the interactive-login parameters
# of the scrypt paper, applied once per open.
SCRYPT_N = 1 << 15
SCRYPT_R = 8
SCRYPT_P = 1
_EARLY_LIMIT = 4  # derivations started and not (yet) used, kept at most


@dataclass(frozen=True)
class KdfParams:
    """scrypt parameters as the repository config stores them."""

    n: int
    r: int
    p: int
    salt: bytes


def new_kdf_params(n: int = SCRYPT_N) -> KdfParams:
    return KdfParams(n=n, r=SCRYPT_R, p=SCRYPT_P, salt=os.urandom(16))


class _Derivation(threading.Thread):
    def __init__(self, passphrase: Secret, params: KdfParams) -> None:
        super().__init__(name="hcbak-kdf", daemon=True)
        self._passphrase = passphrase
        self._params = params
        self._key: bytes | None = None

    def run(self) -> None:
        try:
            self._key = _scrypt(self._passphrase, self._params)
        except Exception:  # MemoryError and the like: derive_kek computes it itself
            self._key = None

    def result(self) -> bytes | None:
        self.join()
        return self._key


_early: dict[bytes, _Derivation] = {}
_early_lock = threading.Lock()


def _slot(passphrase: Secret, params: KdfParams) -> bytes:
    """Which derivation a later open may take: same passphrase and parameters."""
    text = passphrase.reveal().encode("utf-8")
    return hashlib.sha256(repr(params).encode() + b"\0" + text).digest()


def derive_kek(passphrase: Secret, params: KdfParams) -> bytes:
    with _early_lock:
        started = _early.pop(_slot(passphrase, params), None)
    key = started.result() if started is not None else None
    return key if key is not None else _scrypt(passphrase, params)


def derive_early(root: Path, passphrase: Secret) -> None:
    """Start deriving the key of the repository at `root` in a helper thread.

    Best effort: when the config cannot be read or the repository is not encrypted,
    nothing starts, and opening the repository reports whatever is wrong.
    """
    from hcbak.errors import HcbakError
    from hcbak.repo.settings import kdf_from, read_config_doc

    try:
        enc = read_config_doc(Path(root)).get("encryption")
        params = kdf_from(enc) if isinstance(enc, dict) else None
    except HcbakError:  # missing, damaged, foreign: the open says which
        return
    if params is None:
        return
    slot = _slot(passphrase, params)
    with _early_lock:
        if slot in _early:  # already started (the console script, then `job run`)
            return
        while len(_early) >= _EARLY_LIMIT:
            _early.pop(next(iter(_early)))
        job = _early[slot] = _Derivation(passphrase, params)
    job.start()


def _scrypt(passphrase: Secret, params: KdfParams) -> bytes:
    maxmem = 256 * params.n * params.r + (1 << 20)
    return hashlib.scrypt(
        passphrase.reveal().encode("utf-8"),
        salt=params.salt,
        n=params.n,
        r=params.r,
        p=params.p,
        maxmem=maxmem,
        dklen=KEY_LEN,
    )
