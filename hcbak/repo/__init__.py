"""The hcbak repository: a content-addressed, deduplicated, compressed, optionally
encrypted block store on a local or network folder, or an object store
(docs/format.md specifies the bytes; hcbak/repo/storage reaches them).

Nouns:
- block: a fixed-size, aligned slice of a disk; its id is the keyed BLAKE3 (format v2;
  v1: seeded xxh3-128) of its plaintext, 16 bytes (`ZERO_BLOCK` stands for an all-zero
  block, which is never stored).
- blob: one stored block inside a pack (framed, compressed, maybe encrypted).
- pack: a write-once file of blobs with a trailer that makes truncation detectable.
- index segment: a write-once file mapping block id -> (pack, offset, length).
- point: a restore point, one manifest per VM per run with the block map of every disk.
- lock: a lease file under locks/ (shared for backup/restore, exclusive for prune).
- damaged-copy record: a write-once file under damaged/ naming blob copies that failed
  their checks; the index skips them, so the next backup stores those blocks again.

This package never prints and never imports typer, rich or a network client, except
boto3 in storage/s3.py, imported only when an S3 repository is opened.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hcbak.repo.blockmap import ZERO_BLOCK, BlockMap
    from hcbak.repo.opening import init_repo, is_repo, open_repo
    from hcbak.repo.points import DiskImage, Point, PointSummary
    from hcbak.repo.repository import Repository
    from hcbak.repo.settings import RepoSettings

# Loaded on first use (PEP 562): `job run` imports `hcbak.repo.locks` and starts the
# key derivation (`kdf`) long before it needs the codecs and `cryptography`.
_EXPORTS = {
    "ZERO_BLOCK": "blockmap",
    "BlockMap": "blockmap",
    "DiskImage": "points",
    "Point": "points",
    "PointSummary": "points",
    "RepoSettings": "settings",
    "Repository": "repository",
    "init_repo": "opening",
    "is_repo": "opening",
    "open_repo": "opening",
}

__all__ = [
    "ZERO_BLOCK",
    "BlockMap",
    "DiskImage",
    "Point",
    "PointSummary",
    "RepoSettings",
    "Repository",
    "init_repo",
    "is_repo",
    "open_repo",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
