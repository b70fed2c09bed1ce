"""Repository statistics for `repo show`: sizes, counts, dedup and compression ratios."""

from __future__ import annotations

from typing import Any

from hcbak.repo.index import read_segment
from hcbak.repo.repository import Repository


def repo_stats(repo: Repository) -> dict[str, Any]:
    """Streams index segments and manifests; memory stays bounded by one segment/point.

    dedup ratio = logical bytes referenced by all points / unique bytes stored;
    compression ratio = unique bytes stored (plain) / bytes in packs.
    """
    packs = repo.pack_ids()
    pack_bytes = sum(repo.pack_size(p) or 0 for p in packs)
    plain = 0
    for seg in repo.segments:
        if seg in repo.bad_segments:
            continue
        plain += sum(e.plain_len for e in read_segment(repo.store, seg, repo.envelope))
    logical = 0
    points = repo.point_ids()
    for pid in points:
        for disk in repo.load_point(pid).disks:
            logical += sum(1 for _ in disk.block_map.ids()) * disk.block_size
    return {
        "points": len(points),
        "blocks": len(repo.index),
        "packs": len(packs),
        "size": pack_bytes,
        "unique_bytes": plain,
        "logical_bytes": logical,
        "dedup_ratio": round(logical / plain, 2) if plain else None,
        "compression_ratio": round(plain / pack_bytes, 2) if pack_bytes else None,
    }
