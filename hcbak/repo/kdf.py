"""The passphrase's key-encryption key: Argon2id (format v2) or scrypt (format v1),
the floor below which a repository's parameters are refused, and starting the
derivation before it is needed.

New repositories use Argon2id at OWASP's first recommended configuration (46 MiB,
1 pass, 1 lane). It is paid on every open, i.e. every run: measured on the 2-core
reference machine, idle, 0.09 s and +46 MiB peak RSS per open, less than the 0.13 s
of v1's scrypt (N=2^15). RFC 9106's second option (64 MiB, 3 passes, 4 lanes) cost
0.28 s idle and 0.66-0.90 s on the loaded machine, and made the 1%-incremental
benchmark ~0.7 s (2x) slower; scrypt at OWASP's N=2^17 cost 0.54 s and +128 MiB.
Format v1 repositories keep scrypt, read as they were written.

A backup run knows its repository and passphrase ~0.2 s before it opens the
repository (it still imports the CLI and the engine, and logs in). `derive_early`
starts the derivation then, in a helper thread (hashlib's scrypt and OpenSSL's
Argon2id both release the GIL), and `derive_kek` takes that result instead of
computing it again. Only stdlib imports at module level, so starting it costs no
import time (`cryptography` is imported inside the helper thread).
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from hcbak.secrets import Secret

KEY_LEN = 32
SALT_LEN = 16
# Format v2 default: OWASP Password Storage Cheat Sheet, Argon2id m=46 MiB, t=1, p=1.
ARGON2_MEMORY_KIB = 46 * 1024
ARGON2_ITERATIONS = 1
ARGON2_LANES = 1
# The floor a reader enforces (docs/format.md, "Key derivation"): OWASP's minimum for
# Argon2id (19 MiB x 2 passes, or the same memory x passes with more memory), and for
# scrypt the parameters every hcbak release wrote by default (N=2^15, r=8).
ARGON2_FLOOR_MEMORY_KIB = 19 * 1024
ARGON2_FLOOR_WORK_KIB = 2 * 19 * 1024  # memory x passes
SCRYPT_FLOOR_N = 1 << 15
SCRYPT_FLOOR_R = 8
# Format v1 (scrypt) parameters, as v1 was always written: N=2^15, r=8, p=1.
SCRYPT_N = 1 << 15
SCRYPT_R = 8
SCRYPT_P = 1
# Tests only: new repositories get a cheap KDF and the floor is not enforced,
# so the suite does not pay 0.3 s per open (like borg's BORG_TESTONLY_WEAKEN_KDF).
# Never set it in production: repositories created with it are refused without it.
WEAKEN_ENV = "HCBAK_TESTONLY_WEAKEN_KDF"
_EARLY_LIMIT = 4  # derivations started and not (yet) used, kept at most


@dataclass(frozen=True)
class ScryptParams:
    """scrypt parameters as a v1 repository config stores them."""

    n: int
    r: int
    p: int
    salt: bytes


@dataclass(frozen=True)
class Argon2Params:
    """Argon2id parameters as a v2 repository config stores them."""

    memory_kib: int
    iterations: int
    lanes: int
    salt: bytes


KdfParams = ScryptParams | Argon2Params


def weakened() -> bool:
    return os.environ.get(WEAKEN_ENV) == "1"


def new_argon2_params() -> Argon2Params:
    if weakened():
        return Argon2Params(memory_kib=64, iterations=1, lanes=1, salt=os.urandom(SALT_LEN))
    return Argon2Params(ARGON2_MEMORY_KIB, ARGON2_ITERATIONS, ARGON2_LANES, os.urandom(SALT_LEN))


def new_scrypt_params() -> ScryptParams:
    n = 1 << 10 if weakened() else SCRYPT_N
    return ScryptParams(n=n, r=SCRYPT_R, p=SCRYPT_P, salt=os.urandom(SALT_LEN))


def below_floor(params: KdfParams) -> str | None:
    """Why `params` are weaker than hcbak accepts, or None when they are not."""
    if weakened():
        return None
    if isinstance(params, Argon2Params):
        if params.memory_kib < ARGON2_FLOOR_MEMORY_KIB:
            return f"Argon2id memory {params.memory_kib} KiB is below {ARGON2_FLOOR_MEMORY_KIB}"
        if params.memory_kib * params.iterations < ARGON2_FLOOR_WORK_KIB:
            return f"Argon2id memory x passes is below {ARGON2_FLOOR_WORK_KIB} KiB"
        return None
    if params.n < SCRYPT_FLOOR_N or params.r < SCRYPT_FLOOR_R:
        return f"scrypt N={params.n}, r={params.r} is below N={SCRYPT_FLOOR_N}, r={SCRYPT_FLOOR_R}"
    return None


class _Derivation(threading.Thread):
    def __init__(self, passphrase: Secret, params: KdfParams) -> None:
        super().__init__(name="hcbak-kdf", daemon=True)
        self._passphrase = passphrase
        self._params = params
        self._key: bytes | None = None

    def run(self) -> None:
        try:
            self._key = _stretch(self._passphrase, self._params)
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
    return key if key is not None else _stretch(passphrase, params)


def derive_early(root: Path | str, passphrase: Secret) -> None:
    """Start deriving the key of the repository at `root` in a helper thread.

    Best effort: when the config cannot be read, the repository is not encrypted or
    its parameters are refused, nothing starts, and opening the repository reports
    whatever is wrong.
    """
    from hcbak.errors import HcbakError
    from hcbak.repo.settings import kdf_from, read_config_doc

    try:
        doc = read_config_doc(root)
        enc = doc.get("encryption")
        params = kdf_from(enc, doc["version"]) if isinstance(enc, dict) else None
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


def _stretch(passphrase: Secret, params: KdfParams) -> bytes:
    """The one place every key derivation passes (tests count the calls here)."""
    secret = passphrase.reveal().encode("utf-8")
    if isinstance(params, Argon2Params):
        from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

        return Argon2id(
            salt=params.salt,
            length=KEY_LEN,
            iterations=params.iterations,
            lanes=params.lanes,
            memory_cost=params.memory_kib,
        ).derive(secret)
    return hashlib.scrypt(
        secret,
        salt=params.salt,
        n=params.n,
        r=params.r,
        p=params.p,
        maxmem=256 * params.n * params.r + (1 << 20),
        dklen=KEY_LEN,
    )
