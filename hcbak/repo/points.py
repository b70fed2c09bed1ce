"""Restore points: the records and their manifest files.

A manifest is `points/<point id>`: magic, then a sealed JSON header (everything but the
block maps, so listing points is cheap), then a sealed section with the block maps of
all disks in the order of the header's `disks`. Sealing binds the point id (associated
data), so a manifest cannot be renamed to pose as another point.

The header's `version` says how the maps section is laid out: version 1 (what hcbak
wrote until issue 21) concatenates every disk's 16 bytes per block, version 2 only the
runs of non-zero ids ((first block, count, ids) extents), so a sparse 2 TiB disk's
manifest is neither written nor read through a 32 MiB plaintext.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from hcbak.errors import IntegrityError
from hcbak.repo.blockmap import ID_LEN, BlockMap
from hcbak.repo.codec import Envelope

POINT_MAGIC = b"HCBKPNT1"
MANIFEST_VERSION = 2  # what encode_manifest writes
MANIFEST_VERSIONS = (1, 2)  # what decode_header accepts
_EXTENTS = struct.Struct("<Q")  # v2 maps: the number of extents of one disk
_EXTENT = struct.Struct("<QQ")  # v2 maps: an extent's first block and block count
# What a point's snapshot was: "application" (taken with the guest quiesced) or "crash".
# Points written before the header had the key were all crash-consistent.
CONSISTENCY_DEFAULT = "crash"


@dataclass
class DiskImage:
    """One disk in a point: its definition and the block map to restore it from."""

    uuid: str
    slot: int
    type: str
    capacity: int
    block_size: int
    block_map: BlockMap
    serial: int | None = None
    incremental: bool = False
    cbt_reason: str = ""


@dataclass
class Point:
    """A restore point: one VM's definition and disks at one snapshot."""

    id: str
    job: str
    cluster: str
    vm_uuid: str
    vm_name: str
    created: datetime
    vm: dict[str, Any] = field(default_factory=dict)
    snapshot_uuid: str | None = None
    snapshot_label: str | None = None
    disks: list[DiskImage] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    hcbak_version: str = ""
    consistency: str = CONSISTENCY_DEFAULT


@dataclass(frozen=True)
class PointSummary:
    """The header of a point manifest: enough to list and select points without block maps."""

    id: str
    job: str
    cluster: str
    vm_uuid: str
    vm_name: str
    created: datetime
    snapshot_uuid: str | None
    n_disks: int
    capacity: int
    stats: dict[str, Any]
    consistency: str = CONSISTENCY_DEFAULT

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "job": self.job,
            "cluster": self.cluster,
            "vm_uuid": self.vm_uuid,
            "vm": self.vm_name,
            "created": self.created.isoformat(),
            "snapshot_uuid": self.snapshot_uuid,
            "disks": self.n_disks,
            "capacity": self.capacity,
            "consistency": self.consistency,
            "stats": self.stats,
        }


def new_point_id() -> str:
    """128 random bits as 32 hex digits; short unique prefixes resolve too."""
    return os.urandom(16).hex()


def _header(point: Point) -> dict[str, Any]:
    created = point.created
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return {
        "version": MANIFEST_VERSION,
        "id": point.id,
        "job": point.job,
        "cluster": point.cluster,
        "vm_uuid": point.vm_uuid,
        "vm_name": point.vm_name,
        "created": created.astimezone(UTC).isoformat(),
        "vm": point.vm,
        "snapshot_uuid": point.snapshot_uuid,
        "snapshot_label": point.snapshot_label,
        "consistency": point.consistency,
        "stats": point.stats,
        "hcbak_version": point.hcbak_version,
        "disks": [
            {
                "uuid": d.uuid,
                "slot": d.slot,
                "type": d.type,
                "capacity": d.capacity,
                "block_size": d.block_size,
                "n_blocks": len(d.block_map),
                "serial": d.serial,
                "incremental": d.incremental,
                "cbt_reason": d.cbt_reason,
            }
            for d in point.disks
        ],
    }


def _ad(point_id: str, section: bytes) -> bytes:
    return b"hcbak-point-v1:" + point_id.encode() + b":" + section


def encode_manifest(point: Point, envelope: Envelope, version: int = MANIFEST_VERSION) -> bytes:
    """The manifest's bytes; `version` 1 in v1 and v2 repositories, whose readers
    include hcbak releases that know only that one (Repository.manifest_version)."""
    if version not in MANIFEST_VERSIONS:
        raise ValueError(f"no manifest version {version}")
    fields = _header(point)
    if version != MANIFEST_VERSION:
        fields["version"] = version
    header = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    if version == 1:
        maps = b"".join(d.block_map.to_bytes() for d in point.disks)
    else:
        maps = b"".join(_extents_v2(d.block_map) for d in point.disks)
    return (
        POINT_MAGIC
        + envelope.seal(header, _ad(point.id, b"header"))
        + envelope.seal(maps, _ad(point.id, b"maps"))
    )


def _extents_v2(block_map: BlockMap) -> bytes:
    """One disk's v2 maps: u64 count, then per run of non-zero ids u64 first block,
    u64 block count and the ids; blocks outside every extent are ZERO_BLOCK."""
    parts = [b""]
    for first, ids in block_map.runs():
        parts += (_EXTENT.pack(first, len(ids) // ID_LEN), ids)
    parts[0] = _EXTENTS.pack((len(parts) - 1) // 2)
    return b"".join(parts)


def decode_header(data: bytes, point_id: str, envelope: Envelope) -> tuple[dict[str, Any], int]:
    what = f"point {point_id}"
    if data[:8] != POINT_MAGIC:
        raise IntegrityError(f"{what} manifest has a bad magic")
    plain, end = envelope.open(data, 8, _ad(point_id, b"header"), what)
    try:
        header = json.loads(plain)
    except ValueError:
        raise IntegrityError(f"{what} manifest header is not JSON")
    if not isinstance(header, dict) or header.get("id") != point_id:
        raise IntegrityError(f"{what} manifest names another point")
    version = header.get("version")
    if type(version) is not int or version not in MANIFEST_VERSIONS:
        # Refused, never guessed at: a newer layout read as an older one would restore
        # the wrong blocks. Damage to hcbak's eye (exit 6) until it is upgraded.
        raise IntegrityError(
            f"{what} manifest has version {version!r}; this hcbak reads versions "
            f"{', '.join(map(str, MANIFEST_VERSIONS))}",
            hint="written by a newer hcbak? upgrade hcbak to read it",
        )
    return header, end


def summary_from_header(h: dict[str, Any]) -> PointSummary:
    try:
        return _summary(h)
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise IntegrityError(f"point {h.get('id')} header is malformed ({type(exc).__name__})")


def _summary(h: dict[str, Any]) -> PointSummary:
    disks = h.get("disks", [])
    return PointSummary(
        **_header_fields(h),
        n_disks=len(disks),
        capacity=sum(int(d["capacity"]) for d in disks),
    )


def _header_fields(h: dict[str, Any]) -> dict[str, Any]:
    """The header fields a summary and a full point share, decoded in this one place
    (defaults for keys older manifests lack included)."""
    return {
        "id": h["id"],
        "job": h.get("job", ""),
        "cluster": h.get("cluster", ""),
        "vm_uuid": h.get("vm_uuid", ""),
        "vm_name": h.get("vm_name", ""),
        "created": _created(h["created"]),
        "snapshot_uuid": h.get("snapshot_uuid"),
        "stats": h.get("stats", {}),
        "consistency": str(h.get("consistency") or CONSISTENCY_DEFAULT),
    }


def _created(text: str) -> datetime:
    """A point's creation time: ISO-8601 with its UTC offset (points are sorted by it,
    and a naive time cannot be compared with the others)."""
    created = datetime.fromisoformat(text)
    if created.tzinfo is None:
        raise ValueError("created has no UTC offset")
    return created


def decode_manifest(data: bytes, point_id: str, envelope: Envelope) -> Point:
    try:
        return _decode_manifest(data, point_id, envelope)
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise IntegrityError(f"point {point_id} manifest is malformed ({type(exc).__name__})")


def _decode_manifest(data: bytes, point_id: str, envelope: Envelope) -> Point:
    h, pos = decode_header(data, point_id, envelope)
    maps, _end = envelope.open(data, pos, _ad(point_id, b"maps"), f"point {point_id}")
    for d in h["disks"]:
        if int(d["block_size"]) <= 0 or int(d["n_blocks"]) != -(
            -int(d["capacity"]) // int(d["block_size"])
        ):
            # A restore writes exactly `capacity` bytes from n_blocks blocks: a map of
            # another length would restore a disk of another size.
            raise IntegrityError(
                f"point {point_id} disk {d['uuid']}: {d['n_blocks']} blocks do not cover "
                f"its capacity of {d['capacity']} bytes"
            )
    sizes = [int(d["n_blocks"]) for d in h["disks"]]
    read_maps = _maps_v1 if h["version"] == 1 else _maps_v2
    block_maps = read_maps(memoryview(maps), sizes, point_id)
    disks = [
        DiskImage(
            uuid=d["uuid"],
            slot=int(d["slot"]),
            type=d["type"],
            capacity=int(d["capacity"]),
            block_size=int(d["block_size"]),
            block_map=block_map,
            serial=d.get("serial"),
            incremental=bool(d.get("incremental", False)),
            cbt_reason=d.get("cbt_reason", ""),
        )
        for d, block_map in zip(h["disks"], block_maps, strict=True)
    ]
    return Point(
        **_header_fields(h),
        vm=h.get("vm", {}),
        snapshot_label=h.get("snapshot_label"),
        disks=disks,
        hcbak_version=h.get("hcbak_version", ""),
    )


def _maps_v1(maps: memoryview, sizes: list[int], point_id: str) -> list[BlockMap]:
    """Version 1: each disk's 16 bytes per block, concatenated."""
    out, at = [], 0
    for n in sizes:
        if at + n * ID_LEN > len(maps):
            raise IntegrityError(f"point {point_id} block maps are short")
        out.append(BlockMap.from_bytes(maps[at : at + n * ID_LEN]))
        at += n * ID_LEN
    if at != len(maps):
        raise IntegrityError(f"point {point_id} block maps are longer than its disks")
    return out


def _maps_v2(maps: memoryview, sizes: list[int], point_id: str) -> list[BlockMap]:
    """Version 2: per disk, its extents of non-zero ids (see _extents_v2); extents
    ascending, not overlapping, non-empty and inside the disk."""
    out, at = [], 0
    for disk, n in enumerate(sizes):
        if at + _EXTENTS.size > len(maps):
            raise IntegrityError(f"point {point_id} block maps are short")
        (count,) = _EXTENTS.unpack_from(maps, at)
        at += _EXTENTS.size
        bm, end = BlockMap(n), 0
        for _ in range(count):
            if at + _EXTENT.size > len(maps):
                raise IntegrityError(f"point {point_id} block maps are short")
            first, length = _EXTENT.unpack_from(maps, at)
            at += _EXTENT.size
            if length == 0 or first < end or first + length > n:
                raise IntegrityError(
                    f"point {point_id} disk #{disk}: block map extent of {length} blocks "
                    f"at {first} is empty, out of order or past the disk's {n} blocks"
                )
            if at + length * ID_LEN > len(maps):
                raise IntegrityError(f"point {point_id} block maps are short")
            bm.set_run(first, maps[at : at + length * ID_LEN])
            at += length * ID_LEN
            end = first + length
        out.append(bm)
    if at != len(maps):
        raise IntegrityError(f"point {point_id} block maps are longer than its disks")
    return out
