"""Where a repository's bytes live: the ObjectStore interface and its backends.

- base.py: the `ObjectStore` protocol, `Spool` (a local temp file for a big object
  whose key is known only at the end) and `ObjectMissingError`.
- local.py: `LocalStore`, a folder (local disk, NFS, SMB) with fsync/rename/link rules.
- s3.py: `S3Store`, a bucket and prefix through boto3 (imported only for S3 locations);
  s3_target.py parses `s3://bucket/prefix` and credentials without boto3; s3_errors.py
  turns SDK failures into one-line hcbak errors.

`open_store` picks the backend from a location: a path, or a URL (`s3://bucket/prefix`).
Backends other than the folder are imported only when used (start-up time).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hcbak.errors import SecretError, UsageError
from hcbak.repo.storage.base import (
    ObjectMissingError,
    ObjectStore,
    ReadOnlyStoreError,
    Spool,
)
from hcbak.repo.storage.local import LocalStore

# Where a repository is: a folder path, a URL (`s3://bucket/prefix`) or an open store.
Location = ObjectStore | Path | str

__all__ = [
    "LocalStore",
    "Location",
    "ObjectMissingError",
    "ObjectStore",
    "ReadOnlyStoreError",
    "Spool",
    "open_store",
    "store_for",
]


def is_url(location: str | Path) -> bool:
    """True for a URL-like location (`s3://...`), False for a folder path."""
    return isinstance(location, str) and "://" in location


def open_store(location: Location) -> ObjectStore:
    """The store of a repository location (an ObjectStore is passed through)."""
    if not isinstance(location, (str, Path)):
        return location
    if is_url(location):
        scheme = str(location).split("://", 1)[0]
        if scheme == "s3":  # S3Store with boto3's defaults (AWS_* environment)
            return _s3_store(str(location), None)
        raise UsageError(f"repository location {location}: {scheme}:// is not supported")
    return LocalStore(location)


def store_for(repo: Any) -> str | ObjectStore:
    """What `open_repo` takes for a configured repository (hcbak.config.RepoConfig or
    anything with its attributes): the folder path, or an S3Store for an `s3:` entry."""
    s3 = getattr(repo, "s3", None)
    if s3 is None:
        if getattr(repo, "append_only", False):
            return LocalStore(repo.path, append_only=True)
        return str(repo.path)
    return _s3_store(s3.location, s3)


def _s3_store(location: str, s3: Any) -> ObjectStore:
    from hcbak.config.s3_target import parse_keys, parse_s3_target

    try:
        target = parse_s3_target(location)
    except ValueError as exc:
        raise UsageError(f"repository location {location}: {exc}")
    try:
        from hcbak.repo.storage.s3 import S3Options, S3Store  # imports boto3: S3 only
    except ImportError as exc:
        raise UsageError(
            f"repository location {location}: S3 repositories need boto3 ({exc.name} is "
            "not installed)",
            hint="pip install 'hcbak[s3]'",
        )

    if s3 is None:
        return S3Store(target)
    keys = None
    if s3.credentials is not None:
        try:
            keys = parse_keys(s3.credentials.resolve().reveal())
        except ValueError as exc:
            raise SecretError(f"S3 credentials from {s3.credentials.describe()}: {exc}")
    options = S3Options(
        endpoint=s3.endpoint,
        region=s3.region,
        keys=keys,
        profile=s3.profile,
        upload_parallel=s3.upload_parallel,
        immutable_days=s3.immutable_days,
        immutable_mode=str(s3.immutable_mode).upper(),
    )
    return S3Store(target, options)
