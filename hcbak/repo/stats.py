"""Repository statistics for `repo show`: sizes, counts, dedup and compression ratios."""

from __future__ import annotations

from typing import Any

from hcbak.errors import IntegrityError
from hcbak.repo.index import SEG_ENTRY, decode_checked_segment, read_segment_file
from hcbak.repo.repository import Repository
from hcbak.repo.storage.base import ObjectMissingError


def repo_stats(repo: Repository) -> dict[str, Any]:
    """Streams index segments and manifests; memory stays bounded by one segment/point.

    dedup ratio = logical bytes referenced by all points / unique bytes stored;
    compression ratio = unique bytes stored (plain) / bytes in packs.
    """
    packs = repo.pack_sizes()
    pack_bytes = sum(packs.values())
    plain = 0
    for seg in repo.segments:
        # Each segment read once (no `bad_segments` first: with the index cache that
        # reads every segment again); a damaged one is left out (verify reports it).
        try:
            _packs, records = decode_checked_segment(
                seg, read_segment_file(repo.store, seg), repo.envelope
            )
        except (IntegrityError, ObjectMissingError):
            continue
        plain += sum(entry[4] for entry in SEG_ENTRY.iter_unpack(records))
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
