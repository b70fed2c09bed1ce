"""Manifest version 2: block maps stored as extents of non-zero ids (issue 21).

A sparse disk's maps section is as large as its data, not 16 bytes per block of the
disk; version 1 manifests (every repository written before) still read exactly as
before; a version hcbak does not know is refused, never guessed at.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import hypothesis.strategies as st
import pytest
from harness import RunHcbak
from hypothesis import given, settings
from repo_helpers import GOLDEN_PASS, PASS, adopt_golden, disk_bytes, make_repo, write_point

from hcbak.errors import IntegrityError
from hcbak.repo import ZERO_BLOCK, BlockMap, DiskImage, Point, Repository, open_repo
from hcbak.repo import points as points_mod
from hcbak.repo.blockmap import CHUNK_BLOCKS
from hcbak.repo.codec import Envelope
from hcbak.secrets import Secret

BS = 1 << 20
ID = struct.Struct("<Q")


@pytest.fixture(scope="module")
def envelope(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Envelope]:
    root = make_repo(tmp_path_factory.mktemp("v2") / "repo")
    with open_repo(root, passphrase=PASS, lock=None) as repo:
        yield repo.envelope


def _point(maps: list[BlockMap]) -> Point:
    return Point(
        id=points_mod.new_point_id(),
        job="j",
        cluster="c",
        vm_uuid="u",
        vm_name="vm",
        created=datetime(2026, 12, 3, tzinfo=UTC),
        disks=[
            DiskImage(f"d{k}", k, "VIRTIO_DISK", len(bm) * BS, BS, bm) for k, bm in enumerate(maps)
        ],
    )


def _doc_maps(plain: bytes, sizes: list[int]) -> list[bytes]:
    """docs/format.md's v2 maps, read from the page: per disk u64 count, then extents
    of u64 first block, u64 block count and the ids; returns each disk's v1 bytes."""
    out, at = [], 0
    for n in sizes:
        (count,) = ID.unpack_from(plain, at)
        at += 8
        flat = bytearray(16 * n)
        for _ in range(count):
            first, length = struct.unpack_from("<QQ", plain, at)
            at += 16
            flat[16 * first : 16 * (first + length)] = plain[at : at + 16 * length]
            at += 16 * length
        out.append(bytes(flat))
    assert at == len(plain)
    return out


def _maps_plain(data: bytes, point_id: str, envelope: Envelope) -> bytes:
    _h, pos = points_mod.decode_header(data, point_id, envelope)
    ad = b"hcbak-point-v1:" + point_id.encode() + b":maps"
    return envelope.open(data, pos, ad, "maps")[0]


ids = st.sampled_from([ZERO_BLOCK, b"\x01" + bytes(15), bytes(15) + b"\x02", b"\x03" * 16])
disk_maps = st.lists(
    st.tuples(
        st.sampled_from([0, 1, 5, CHUNK_BLOCKS + 3]),
        st.lists(st.tuples(st.integers(0, CHUNK_BLOCKS + 2), ids), max_size=12),
    ),
    max_size=3,
)


@settings(max_examples=60, deadline=None)
@given(disk_maps)
def test_v2_and_v1_manifests_decode_to_the_same_maps_and_v2_matches_the_page(
    envelope: Envelope, spec: list[tuple[int, list[tuple[int, bytes]]]]
) -> None:
    maps = []
    for n, writes in spec:
        bm = BlockMap(n)
        for i, block_id in writes:
            if i < n:
                bm.set(i, block_id)
        maps.append(bm)
    point = _point(maps)
    v2 = points_mod.encode_manifest(point, envelope)
    v1 = points_mod.encode_manifest(point, envelope, version=1)
    for data, version in ((v2, 2), (v1, 1)):
        header, _ = points_mod.decode_header(data, point.id, envelope)
        assert header["version"] == version
        decoded = points_mod.decode_manifest(data, point.id, envelope)
        assert [d.block_map for d in decoded.disks] == maps
    sizes = [len(bm) for bm in maps]
    assert _doc_maps(_maps_plain(v2, point.id, envelope), sizes) == [bm.to_bytes() for bm in maps]
    assert _maps_plain(v1, point.id, envelope) == b"".join(bm.to_bytes() for bm in maps)


def test_a_sparse_2_tib_map_is_written_and_read_without_16_bytes_per_block(
    envelope: Envelope, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 2 << 20  # 2 TiB of 1 MiB blocks; 64 ids spread over it
    bm = BlockMap(n)
    for k in range(64):
        bm.set(k * (n // 64), bytes([k + 1]) * 16)
    bm.set_run(n - 3, b"\x07" * 48)  # a run up to the disk's end
    point = _point([bm])

    def whole_map(self: BlockMap) -> bytes:
        raise AssertionError("the whole 16 B/block map was built")

    monkeypatch.setattr(BlockMap, "to_bytes", whole_map)
    data = points_mod.encode_manifest(point, envelope)
    plain = _maps_plain(data, point.id, envelope)
    assert len(plain) == 8 + 64 * (16 + 16) + 16 + 48  # v1: 32 MiB
    back = points_mod.decode_manifest(data, point.id, envelope).disks[0].block_map
    assert back == bm and len(back._chunks) == 65


def _seal(point: Point, maps: bytes, envelope: Envelope, **header: object) -> bytes:
    fields = {**points_mod._header(point), **header}
    head = json.dumps(fields).encode()
    ad = b"hcbak-point-v1:" + point.id.encode()
    return (
        points_mod.POINT_MAGIC
        + envelope.seal(head, ad + b":header")
        + envelope.seal(maps, ad + b":maps")
    )


def _ext(first: int, count: int, fill: int = 9) -> bytes:
    return struct.pack("<QQ", first, count) + bytes([fill]) * 16 * count


@pytest.mark.parametrize(
    ("maps", "why"),
    [
        (ID.pack(2) + _ext(3, 2) + _ext(4, 1), "out of order"),  # overlapping
        (ID.pack(2) + _ext(5, 1) + _ext(1, 1), "out of order"),
        (ID.pack(1) + _ext(3, 0), "empty"),
        (ID.pack(1) + _ext(7, 2), "past the disk"),  # 8 blocks: 7 + 2 > 8
        (ID.pack(1) + _ext(0, 2)[:-1], "short"),
        (ID.pack(2) + _ext(0, 2), "short"),  # an extent announced, not there
        (ID.pack(1), "short"),  # the second disk's count is missing
        (ID.pack(0) + ID.pack(0) + b"\0", "longer than its disks"),
    ],
    ids=[
        "overlap",
        "backwards",
        "empty",
        "past-end",
        "cut-ids",
        "missing-extent",
        "missing-disk",
        "trailing",
    ],
)
def test_a_malformed_v2_maps_section_is_damage(envelope: Envelope, maps: bytes, why: str) -> None:
    point = _point([BlockMap(8), BlockMap(4)])
    data = _seal(point, maps, envelope)
    with pytest.raises(IntegrityError, match=why):
        points_mod.decode_manifest(data, point.id, envelope)


@pytest.mark.parametrize("version", [3, 0, "2", True, None])
def test_a_manifest_of_a_version_hcbak_does_not_know_is_refused(
    envelope: Envelope, version: object
) -> None:
    point = _point([BlockMap(8)])
    data = _seal(point, ID.pack(0), envelope, version=version)
    with pytest.raises(IntegrityError, match=f"has version {version!r}; this hcbak reads") as err:
        points_mod.decode_manifest(data, point.id, envelope)
    assert "upgrade hcbak" in err.value.one_line()
    assert err.value.exit_code == 6


def _forge_v3(repo: Repository) -> str:
    """A manifest as a future hcbak might write it: version 3, maps unreadable."""
    point = _point([BlockMap(4)])
    point.vm_name = "future"
    repo.store.put(f"points/{point.id}", _seal(point, b"?" * 40, repo.envelope, version=3))
    return point.id


def test_points_of_an_unknown_version_are_named_not_read_and_others_still_restore(
    run_hcbak: RunHcbak, tmp_path: Path
) -> None:
    """Through the CLI on a copy of the golden (version 1) repository: its points still
    list, show and verify; a version 3 manifest is left out of the listing, `points
    show` and `repo verify` exit 6 naming it and what to do, `repo prune` refuses."""
    copy, env = adopt_golden(run_hcbak, tmp_path)
    with open_repo(copy, passphrase=Secret(GOLDEN_PASS)) as repo:
        future = _forge_v3(repo)
    listing = run_hcbak("points", "list", "--json", env=env)  # lists the rest, exit 6
    assert listing.returncode == 6 and f"{future} manifest has version 3" in listing.stderr
    assert [p["vm"] for p in json.loads(listing.stdout)["points"]] == ["web", "db"]
    web = json.loads(run_hcbak("points", "show", "web@latest", "--json", env=env).stdout)
    assert web["disks"][0]["stored_blocks"] == 3
    show = run_hcbak("points", "show", future, env=env)
    assert show.returncode == 6 and "upgrade hcbak" in show.stderr, show.stderr
    verify = run_hcbak("repo", "verify", "g", env=env)
    assert verify.returncode == 6 and future in verify.stdout + verify.stderr
    # prune cannot know what the unreadable point needs: it refuses, deleting nothing
    forget = run_hcbak("points", "forget", "db@latest", env=env)
    assert forget.returncode == 1 and "forgot point" in forget.stderr  # 1: the warning
    packs = sorted(p.name for p in (copy / "packs").rglob("*") if p.is_file())
    prune = run_hcbak("repo", "prune", "g", env=env)
    assert prune.returncode == 6 and future in prune.stderr, prune.stderr
    assert sorted(p.name for p in (copy / "packs").rglob("*") if p.is_file()) == packs


def test_a_new_point_is_version_2_and_restores(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "repo", encrypted=False)
    with open_repo(root) as repo:
        point = write_point(repo, disk_bytes(4, 6))
        data = repo.store.get(f"points/{point.id}")
        assert points_mod.decode_header(data, point.id, repo.envelope)[0]["version"] == 2
        assert repo.load_point(point.id).disks[0].block_map == point.disks[0].block_map


@pytest.mark.parametrize("golden", ["golden-v1", "golden-v2"])
def test_v1_and_v2_repositories_keep_writing_manifest_version_1(
    tmp_path: Path, golden: str
) -> None:
    """Older hcbak reads those repositories and knows only manifest version 1: a point
    written there now must not look damaged to it. Only format 3 (what `init` writes
    now) gets the sparse maps."""
    import shutil

    root = tmp_path / golden
    shutil.copytree(Path(__file__).parents[1] / "data" / golden, root)
    with open_repo(root, passphrase=Secret(f"{golden} passphrase")) as repo:
        assert repo.config.version == int(golden[-1])
        point = write_point(repo, disk_bytes(5, 3))
        data = repo.store.get(f"points/{point.id}")
        assert points_mod.decode_header(data, point.id, repo.envelope)[0]["version"] == 1
        assert repo.load_point(point.id).disks[0].block_map == point.disks[0].block_map
