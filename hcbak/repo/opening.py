"""Creating and opening repositories: `init_repo`, `open_repo`, `set_passphrase`.

A repository is named by a location (hcbak/repo/storage: a folder path today, a URL
such as `s3://bucket/prefix` for an object store); these functions build its
ObjectStore, read or write its `config` (hcbak/repo/settings.py) and hold its lease
(hcbak/repo/locks.py) while a Repository is in use.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from hcbak.errors import RepoError, UsageError
from hcbak.repo.blockstore import PACK_TARGET
from hcbak.repo.codec import codec_id
from hcbak.repo.crypto import KeyMaterial
from hcbak.repo.index_cache import IndexCache
from hcbak.repo.kdf import (
    Argon2Params,
    KdfParams,
    ScryptParams,
    new_argon2_params,
    new_scrypt_params,
)
from hcbak.repo.locks import SHARED, ReadOnlyRepoError, RepoLock
from hcbak.repo.repository import Repository
from hcbak.repo.settings import (
    CONFIG_KEY,
    FORMAT_VERSION,
    KNOWN_VERSIONS,
    Expected,
    RepoSettings,
    encode_config,
    load_settings,
    validate_block_size,
    write_config,
)
from hcbak.repo.storage import Location, open_store
from hcbak.repo.summary_cache import SummaryCache
from hcbak.secrets import Secret

INDEX_CACHE = "index-cache"  # under the state dir: hcbak/repo/index_cache.py


def is_repo(location: Location) -> bool:
    """True when `location` holds an hcbak repository (its config object exists)."""
    return open_store(location).size(CONFIG_KEY) is not None


def init_repo(
    location: Location,
    *,
    compression: str = "lz4",
    block_size: int = 1024 * 1024,
    passphrase: Secret | None = None,
    version: int = FORMAT_VERSION,
    kdf: KdfParams | None = None,
) -> RepoSettings:
    """Create a repository in an empty (or missing) location; `config` is written last.

    `version` 2 (the default) uses Argon2id and keyed-BLAKE3 block ids; 1 (scrypt,
    seeded XXH3) is kept for tests and fixtures of the older format. `kdf` overrides
    the default parameters of the version's key derivation.
    """
    if version not in KNOWN_VERSIONS:
        raise UsageError(f"repository format version {version} is not supported")
    store = open_store(location)
    codec_id(compression)
    validate_block_size(block_size)
    settings = RepoSettings(
        repo_id=os.urandom(16).hex(),
        block_size=block_size,
        compression=compression,
        encrypted=passphrase is not None,
        version=version,
        created=datetime.now(UTC).isoformat(),
    )
    if passphrase is not None and kdf is None:
        kdf = new_kdf_for(version)
    if kdf is not None and not isinstance(kdf, Argon2Params if version >= 2 else ScryptParams):
        raise UsageError(f"format v{version} does not use {type(kdf).__name__}")
    store.create()
    material = KeyMaterial.generate(version)
    write_config(store, encode_config(settings, material, passphrase, kdf))
    return settings


def new_kdf_for(version: int) -> KdfParams:
    """The default key derivation of a format version: v2 Argon2id, v1 scrypt."""
    return new_argon2_params() if version >= 2 else new_scrypt_params()


@contextmanager
def open_repo(
    location: Location,
    *,
    passphrase: Secret | None = None,
    lock: str | None = "shared",
    lock_wait: float = 0.0,
    pack_target: int = PACK_TARGET,
    command: str | None = None,
    read_only_ok: bool = False,
    state_dir: Path | None = None,
    expect: Expected | None = None,
) -> Iterator[Repository]:
    """Open a repository, holding a shared/exclusive lease (or none) while in use.

    `read_only_ok` (restore, verify, mount): where no lock file can be written (a
    read-only mount, a snapshot, no write permission) a shared opener goes on without a
    lock and says so in `repo.unlocked_reason`. `state_dir` keeps this host's sightings
    of other locks (docs/format.md, "Locks"); without one (library use, tests) they last
    as long as this process. `expect` is what hcbak's config pins (settings.Expected): a
    repository that is not the one expected (another id, encryption switched off) is
    refused, exit 6."""
    store = open_store(location)
    settings, material, ids = load_settings(store, passphrase, expect)
    held: RepoLock | None = None
    unlocked_reason = ""
    if lock is not None:
        held = RepoLock(store, lock, command=command, state_dir=state_dir)
        try:
            held.acquire(wait=lock_wait)
        except ReadOnlyRepoError as exc:
            if not (read_only_ok and lock == SHARED):
                raise
            held, unlocked_reason = None, exc.message
    try:
        cache = IndexCache(state_dir / INDEX_CACHE, settings.repo_id) if state_dir else None
        repo = Repository(
            store,
            settings,
            material,
            ids,
            pack_target=pack_target,
            index_cache=cache,
            preload=lock is not None,
        )
        repo.lock = held
        repo.unlocked_reason = unlocked_reason
        if state_dir is not None:
            repo.summary_cache = SummaryCache(state_dir, settings.repo_id)
        try:
            yield repo
            repo.flush()
        finally:
            repo.close()
    finally:
        if held is not None:
            held.release()


def set_passphrase(
    location: Location,
    old: Secret | None,
    new: Secret,
    expect: Expected | None = None,
    kdf: KdfParams | None = None,
) -> None:
    """Rewrap the master key under a new passphrase (data and ids stay unchanged), with
    a new salt and the format version's default key derivation."""
    store = open_store(location)
    settings, material, _ = load_settings(store, old, expect)
    if material is None:
        raise RepoError(
            f"repository {store.location} is not encrypted",
            hint="encryption is chosen when the repository is created",
        )
    params = kdf if kdf is not None else new_kdf_for(settings.version)
    write_config(store, encode_config(settings, material, new, params))
