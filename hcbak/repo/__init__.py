"""The hcbak repository: a content-addressed, deduplicated, compressed, optionally
encrypted block store on a local or network folder (docs/format.md specifies the bytes).

Nouns:
- block: a fixed-size, aligned slice of a disk; its id is the seeded xxh3-128 of its
  plaintext (`ZERO_BLOCK` stands for an all-zero block, which is never stored).
- blob: one stored block inside a pack (framed, compressed, maybe encrypted).
- pack: a write-once file of blobs with a trailer that makes truncation detectable.
- index segment: a write-once file mapping block id -> (pack, offset, length).
- point: a restore point, one manifest per VM per run with the block map of every disk.
- lock: a lease file under locks/ (shared for backup/restore, exclusive for prune).

This package never prints and never imports typer, rich or a network client.
"""

from hcbak.repo.blockmap import ZERO_BLOCK, BlockMap
from hcbak.repo.points import DiskImage, Point, PointSummary
from hcbak.repo.repository import RepoSettings, Repository, init_repo, is_repo, open_repo

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
