"""Where a repository's bytes live: the ObjectStore interface and its backends.

- base.py: the `ObjectStore` protocol, `Spool` (a local temp file for a big object
  whose key is known only at the end) and `ObjectMissingError`.
- local.py: `LocalStore`, a folder (local disk, NFS, SMB) with fsync/rename/link rules.

`open_store` picks the backend from a location: a path, or a URL (`s3://bucket/prefix`).
Backends other than the folder are imported only when used (start-up time).
"""

from __future__ import annotations

from pathlib import Path

from hcbak.errors import UsageError
from hcbak.repo.storage.base import (
    ObjectMissingError,
    ObjectStore,
    ReadOnlyStoreError,
    Spool,
)
from hcbak.repo.storage.local import LocalStore

__all__ = [
    "LocalStore",
    "ObjectMissingError",
    "ObjectStore",
    "ReadOnlyStoreError",
    "Spool",
    "open_store",
]


def is_url(location: str | Path) -> bool:
    """True for a URL-like location (`s3://...`), False for a folder path."""
    return isinstance(location, str) and "://" in location


def open_store(location: str | Path | ObjectStore) -> ObjectStore:
    """The store of a repository location (an ObjectStore is passed through)."""
    if not isinstance(location, (str, Path)):
        return location
    if is_url(location):
        scheme = str(location).split("://", 1)[0]
        raise UsageError(f"repository location {location}: {scheme}:// is not supported")
    return LocalStore(location)
