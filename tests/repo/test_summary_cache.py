"""This host's point summaries (hcbak/repo/summary_cache.py): a listing reads only the
manifests it has not seen, forgets what was forgotten, and never trusts a bad file."""

from __future__ import annotations

import json
from pathlib import Path

from repo_helpers import PASS, disk_bytes, make_repo, write_point

from hcbak.repo import Repository, open_repo
from hcbak.repo.summary_cache import FOLDER


def _counting_reads(repo: Repository) -> list[str]:
    """The point manifests the repository reads from now on (whole or a range)."""
    reads: list[str] = []
    store = repo.store
    real_get, real_range = store.get, store.get_range

    def get(key: str) -> bytes:
        reads.append(key)
        return real_get(key)

    def get_range(key: str, offset: int, length: int) -> bytes:
        reads.append(key)
        return real_range(key, offset, length)

    store.get, store.get_range = get, get_range  # type: ignore[method-assign]
    return reads


def _listing(root: Path, state: Path | None) -> tuple[list[dict[str, object]], list[str]]:
    """(the listing, the manifests it read)."""
    with open_repo(root, passphrase=PASS, lock=None, state_dir=state) as repo:
        reads = _counting_reads(repo)
        listed = [s.to_json() for s in repo.list_points()]
    return listed, sorted({k for k in reads if k.startswith("points/")})


def test_a_second_listing_reads_only_new_manifests_and_drops_forgotten_ones(
    tmp_path: Path,
) -> None:
    root, state = make_repo(tmp_path / "r"), tmp_path / "state"
    with open_repo(root, passphrase=PASS) as repo:
        ids = [write_point(repo, disk_bytes(s, 2), vm=f"vm{s}").id for s in range(3)]
    first, reads = _listing(root, state)
    assert len(reads) == 3  # every header read once
    again, reads = _listing(root, state)
    assert again == first and reads == []  # all from this host's copy

    with open_repo(root, passphrase=PASS) as repo:
        new = write_point(repo, disk_bytes(9, 2), vm="vm9").id
        repo.forget_points([ids[0]])
    listed, reads = _listing(root, state)
    assert reads == [f"points/{new}"]
    assert sorted(p["id"] for p in listed) == sorted([*ids[1:], new])
    assert listed == _listing(root, None)[0]  # what the manifests themselves say
    cached = json.loads((state / FOLDER / f"{repo.config.repo_id}.json").read_text())
    assert ids[0] not in cached["points"]


def test_a_damaged_cache_file_is_ignored_and_rewritten(tmp_path: Path) -> None:
    root, state = make_repo(tmp_path / "r"), tmp_path / "state"
    with open_repo(root, passphrase=PASS) as repo:
        write_point(repo, disk_bytes(1, 2), vm="web")
    truth, _ = _listing(root, state)
    [path] = (state / FOLDER).iterdir()
    doc = json.loads(path.read_text())
    [pid] = doc["points"]
    doc["points"][pid]["vm"] = "forged"  # the checksum no longer matches
    path.write_text(json.dumps(doc))
    listed, reads = _listing(root, state)
    assert listed == truth and reads == [f"points/{pid}"]
    assert _listing(root, state) == (truth, [])  # rewritten whole
