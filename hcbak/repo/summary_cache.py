"""This host's copy of the point summaries: a listing reads only manifests it has not seen.

Why: every backup looks at its job's points and `points list` at all of them, and each
manifest's header is one request (a ranged GET on S3: 6 000 points are minutes of
round trips per run). Manifests are write-once under random ids, so a summary read
once stays true for as long as the point exists; the repository's listing says which
points exist, and summaries of points no longer listed are dropped.

`<state dir>/point-summaries/<repo id>.json` holds the summaries (`PointSummary.to_json`
plus a checksum); it is derived, private to this user, replaced atomically, and ignored
(then rewritten) when it fails its checks. Damage to a manifest after its summary was
cached is found where whole manifests are read: restore, verify, prune.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import xxhash

from hcbak.fsio import write_atomic
from hcbak.repo import fsio
from hcbak.repo.points import PointSummary

log = logging.getLogger(__name__)

FOLDER = "point-summaries"  # under the state dir
FORMAT = 1


class SummaryCache:
    def __init__(self, state_dir: Path, repo_id: str) -> None:
        self.path = Path(state_dir) / FOLDER / f"{repo_id}.json"
        self.repo_id = repo_id

    def load(self) -> dict[str, PointSummary]:
        """The cached summaries by point id; empty when there is no usable file."""
        try:
            doc = json.loads(self.path.read_bytes())
            check = doc.pop("check")
            if check != _digest(doc):
                raise ValueError("checksum mismatch")
            if doc["format"] != FORMAT or doc["repo_id"] != self.repo_id:
                raise ValueError("another format or repository")
            return {pid: _summary(s) for pid, s in doc["points"].items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning(
                "point summary cache %s is unusable (%s): reading manifests", self.path, exc
            )
            return {}

    def save(self, summaries: dict[str, PointSummary]) -> None:
        """Replace the file; a state dir that cannot be written only costs reads."""
        doc: dict[str, Any] = {
            "format": FORMAT,
            "repo_id": self.repo_id,
            "points": {pid: s.to_json() for pid, s in sorted(summaries.items())},
        }
        doc["check"] = _digest(doc)
        try:
            fsio.make_private_dir(self.path.parent, parents=True)
            write_atomic(self.path, json.dumps(doc, sort_keys=True).encode())
        except OSError as exc:
            log.debug("point summary cache %s not written: %s", self.path, exc)


def _digest(doc: dict[str, Any]) -> str:
    return xxhash.xxh3_128_hexdigest(json.dumps(doc, sort_keys=True).encode())


def _summary(j: dict[str, Any]) -> PointSummary:
    """The inverse of `PointSummary.to_json`."""
    created = datetime.fromisoformat(j["created"])
    if created.tzinfo is None:
        raise ValueError("created has no UTC offset")
    return PointSummary(
        id=str(j["id"]),
        job=str(j["job"]),
        cluster=str(j["cluster"]),
        vm_uuid=str(j["vm_uuid"]),
        vm_name=str(j["vm"]),
        created=created,
        snapshot_uuid=j["snapshot_uuid"],
        n_disks=int(j["disks"]),
        capacity=int(j["capacity"]),
        stats=dict(j["stats"]),
        consistency=str(j["consistency"]),
    )
