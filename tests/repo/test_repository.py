"""The core repository API on real files: round trips, dedup, encryption, points."""

from __future__ import annotations

import errno
import os
import random
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from repo_helpers import BS, PASS, disk_bytes, make_repo, read_disk, write_point

from hcbak.errors import (
    IntegrityError,
    NoSpaceError,
    NotFoundError,
    PassphraseError,
    RepoError,
    UsageError,
)
from hcbak.repo import ZERO_BLOCK, BlockMap, DiskImage, Point, Repository, init_repo, open_repo
from hcbak.secrets import Secret


@pytest.mark.parametrize("encrypted", [True, False])
@pytest.mark.parametrize("compression", ["lz4", "zstd", "none"])
def test_point_round_trips_bit_exact(tmp_path: Path, encrypted: bool, compression: str) -> None:
    root = make_repo(tmp_path / "r", encrypted=encrypted, compression=compression)
    data = disk_bytes(1, 12)
    with open_repo(root, passphrase=PASS, pack_target=1 << 20) as repo:
        point = write_point(repo, data)
    with open_repo(root, passphrase=PASS) as repo:
        assert read_disk(repo, point.id) == data
        assert repo.load_point(point.id).disks[0].serial == 7


def test_identical_blocks_are_stored_once_across_points(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "r")
    data = disk_bytes(2, 10)
    with open_repo(root, passphrase=PASS) as repo:
        write_point(repo, data, vm="a")
        n = len(repo.index)
        block = data[:BS]
        assert repo.put_block(repo.block_id(block), block) == 0
        write_point(repo, data, vm="b")
        assert len(repo.index) == n
        assert len(repo.list_points()) == 2


def test_zero_blocks_are_never_stored(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "r")
    with open_repo(root, passphrase=PASS) as repo:
        point = write_point(repo, bytes(4 * BS))
        assert len(repo.index) == 0
        assert repo.load_point(point.id).disks[0].block_map.get(3) == ZERO_BLOCK
        assert read_disk(repo, point.id) == bytes(4 * BS)


def test_wrong_passphrase_is_a_clear_error(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "r")
    with pytest.raises(PassphraseError, match="wrong passphrase"):
        with open_repo(root, passphrase=Secret("nope")):
            pass
    with pytest.raises(PassphraseError, match="no passphrase"):
        with open_repo(root):
            pass


def test_ids_are_seeded_per_repository(tmp_path: Path) -> None:
    block = b"x" * BS
    ids = []
    for name in ("a", "b"):
        root = make_repo(tmp_path / name)
        with open_repo(root, passphrase=PASS) as repo:
            ids.append(repo.block_id(block))
    assert ids[0] != ids[1]


def test_init_refuses_a_non_empty_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "photo.jpg").write_bytes(b"x")
    with pytest.raises(RepoError, match="not empty"):
        init_repo(tmp_path / "f")
    make_repo(tmp_path / "r")
    with pytest.raises(RepoError, match="already"):
        init_repo(tmp_path / "r")


def test_concurrent_put_block_from_threads_stores_each_block_once(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "r")
    blocks = [os.urandom(BS) for _ in range(24)]
    with open_repo(root, passphrase=PASS, pack_target=1 << 20) as repo:
        added: list[int] = []

        def work() -> None:
            for b in blocks:
                added.append(repo.put_block(repo.block_id(b), b))

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        repo.flush()
        assert sum(1 for a in added if a > 0) == len(blocks)
        assert len(repo.index) == len(blocks)
        for b in blocks:
            assert repo.get_block(repo.block_id(b)) == b


def test_get_block_before_flush_reads_the_open_pack(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "r")
    with open_repo(root, passphrase=PASS) as repo:
        block = os.urandom(BS)
        repo.put_block(repo.block_id(block), block)
        assert repo.get_block(repo.block_id(block)) == block


def test_resolve_point_by_prefix_latest_and_date(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "r")
    day1 = datetime(2026, 1, 5, 3, 0, tzinfo=UTC)
    with open_repo(root, passphrase=PASS) as repo:
        p1 = write_point(repo, b"a" * BS, created=day1)
        p2 = write_point(repo, b"b" * BS, created=day1 + timedelta(days=1))
        assert repo.resolve_point("vm1@latest") == p2.id
        assert repo.resolve_point("vm1@2026-01-05") == p1.id
        assert repo.resolve_point(p1.id[:8]) == p1.id
        with pytest.raises(NotFoundError):
            repo.resolve_point("vm1@2026-02-01")
        with pytest.raises(UsageError):
            repo.resolve_point("vm1@yesterday")
        repo.forget_points([p1.id])
        assert [p.id for p in repo.list_points()] == [p2.id]


def test_forget_with_an_unknown_id_forgets_nothing(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "r")
    with open_repo(root, passphrase=PASS) as repo:
        p1 = write_point(repo, b"a" * BS)
        with pytest.raises(NotFoundError):
            repo.forget_points([p1.id, "f" * 32])
        assert [p.id for p in repo.list_points()] == [p1.id]


def test_list_points_filters_by_vm_and_job(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "r", encrypted=False)
    with open_repo(root) as repo:
        write_point(repo, b"a" * BS, vm="web", job="j1")
        write_point(repo, b"b" * BS, vm="db", job="j2")
        assert [p.vm_name for p in repo.list_points(vm="db")] == ["db"]
        assert [p.job for p in repo.list_points(job="j1")] == ["j1"]


def test_a_point_header_longer_than_the_first_read_lists_whole(tmp_path: Path) -> None:
    """list_points reads a manifest's header with one ranged read (SUMMARY_READ); a
    header longer than that (a VM with a long definition) is read on, not cut."""
    from hcbak.repo.repository import SUMMARY_READ

    root = make_repo(tmp_path / "r")
    text = os.urandom(2 * SUMMARY_READ).hex()  # does not compress below the first read
    with open_repo(root, passphrase=PASS) as repo:
        point = write_point(repo, disk_bytes(3, 2), vm="long")
        vm = {"name": "long", "description": text}
        big = Point(**{**point.__dict__, "id": repo.new_point_id(), "vm": vm})
        repo.save_point(big)
    assert (root / "points" / big.id).stat().st_size > 2 * SUMMARY_READ
    with open_repo(root, passphrase=PASS) as repo:
        assert {s.id for s in repo.list_points(vm="long")} == {point.id, big.id}
        assert repo.unreadable_points == {}
        assert repo.load_point(big.id).vm["description"] == text


def test_block_map_round_trips_and_copies() -> None:
    bm = BlockMap(3)
    bm.set(1, b"\x01" * 16)
    other = BlockMap.from_bytes(bm.to_bytes())
    assert other == bm and other.get(1) == b"\x01" * 16 and other.get(0) == ZERO_BLOCK
    cp = bm.copy()
    cp.set(2, b"\x02" * 16)
    assert bm.get(2) == ZERO_BLOCK and len(cp) == 3
    with pytest.raises(IndexError):
        bm.get(3)


@settings(max_examples=60, deadline=None)
@given(
    st.binary(min_size=0, max_size=4096),
    st.sampled_from(["lz4", "zstd", "none"]),
    st.booleans(),
)
def test_envelope_round_trips_any_bytes_and_rejects_a_foreign_id(
    plain: bytes, compression: str, encrypted: bool
) -> None:
    from hcbak.repo.codec import Envelope, codec_id
    from hcbak.repo.crypto import Sealer

    env = Envelope(Sealer(bytes(range(32)) if encrypted else None))
    sealed = env.seal(plain, b"point-a", codec_id(compression))
    assert env.open(sealed, 0, b"point-a", "x") == (plain, len(sealed))
    if encrypted:
        with pytest.raises(IntegrityError):
            env.open(sealed, 0, b"point-b", "x")


@settings(max_examples=80, deadline=None)
@given(
    st.binary(min_size=0, max_size=512),
    st.booleans(),
    st.integers(0, 10_000),
    st.integers(0, 7),
)
def test_an_envelope_detects_any_single_flipped_bit(
    plain: bytes, encrypted: bool, where: int, bit: int
) -> None:
    """Reserved header bits included: the crc covers them as zero, so they are checked
    on their own (a flip there passed verify before)."""
    from hcbak.repo.codec import Envelope
    from hcbak.repo.crypto import Sealer

    env = Envelope(Sealer(bytes(range(32)) if encrypted else None))
    sealed = bytearray(env.seal(plain, b"ad"))
    sealed[where % len(sealed)] ^= 1 << bit
    with pytest.raises(IntegrityError):
        env.open(bytes(sealed), 0, b"ad", "x")


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=2048), st.integers(0, 2047))
def test_blob_frame_detects_any_single_flipped_byte(payload: bytes, where: int) -> None:
    from hcbak.repo.pack import frame_blob, parse_blob

    frame = frame_blob(b"\x07" * 16, 0, 0, len(payload), payload)
    assert parse_blob(frame, "b").payload == payload
    damaged = bytearray(frame)
    damaged[where % len(frame)] ^= 0xFF
    with pytest.raises(IntegrityError):
        parse_blob(bytes(damaged), "b")


def test_save_point_commits_while_other_threads_keep_storing(tmp_path: Path) -> None:
    """A busy repository (other VMs' threads) must not starve a point's commit, and
    everything the point references is indexed on disk when save_point returns."""
    import time

    root = make_repo(tmp_path / "r", encrypted=False)
    stop = threading.Event()
    with open_repo(root, pack_target=1 << 20) as repo:

        def churn(seed: int) -> None:
            rnd = random.Random(seed)
            while not stop.is_set():
                block = rnd.randbytes(BS)
                repo.put_block(repo.block_id(block), block)

        threads = [threading.Thread(target=churn, args=(s,)) for s in range(3)]
        for t in threads:
            t.start()
        try:
            saved = []
            for n in range(3):
                t0 = time.monotonic()
                saved.append(write_point(repo, disk_bytes(100 + n, 4), vm=f"vm{n}"))
                assert time.monotonic() - t0 < 30
        finally:
            stop.set()
            for t in threads:
                t.join()
        with open_repo(root, lock=None) as other:  # sees only what is durable on disk
            for point in saved:
                assert read_disk(other, point.id) == disk_bytes(100 + int(point.vm_name[2:]), 4)


def test_failed_pack_write_refuses_only_points_that_lost_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pack that cannot be sealed (ENOSPC here, injected: a full disk at exactly this
    moment cannot be arranged otherwise) costs the points whose blocks were in it; the
    repository object stays usable for the next point and for a retry."""
    from hcbak.repo import pack as pack_mod

    root = make_repo(tmp_path / "r")
    lost_data = disk_bytes(1, 4)
    good_data = disk_bytes(2, 4)
    real_finish = pack_mod.PackWriter.finish
    calls = {"n": 0}

    def finish_fails_once(self: pack_mod.PackWriter) -> str:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_finish(self)

    monkeypatch.setattr(pack_mod.PackWriter, "finish", finish_fails_once)
    with open_repo(root, passphrase=PASS) as repo:
        with pytest.raises(NoSpaceError):
            write_point(repo, lost_data, vm="lost")
        # The blocks of the aborted pack are unknown again: a retry stores them anew.
        retried = write_point(repo, lost_data, vm="lost")
        good = write_point(repo, good_data, vm="good")
        assert read_disk(repo, retried.id) == lost_data
        assert read_disk(repo, good.id) == good_data
    with open_repo(root, passphrase=PASS) as repo:
        assert sorted(p.vm_name for p in repo.list_points()) == ["good", "lost"]


def test_point_referencing_a_lost_block_is_not_committed(tmp_path: Path) -> None:
    """Another thread deduplicated against a block whose write then failed: the point that
    references it must not commit (its manifest would point at nothing)."""
    root = make_repo(tmp_path / "r")
    data = disk_bytes(3, 2)
    with open_repo(root, passphrase=PASS) as repo:
        bs = repo.config.block_size
        bm = BlockMap(2)
        for i in range(2):
            block = data[i * bs : (i + 1) * bs]
            if block.count(0) != bs:
                bm.set(i, repo.block_id(block))
        # As if both puts failed after other threads had deduplicated against them.
        repo._lost.update(bm.ids())
        point = Point(
            id=repo.new_point_id(),
            job="nightly",
            cluster="c1",
            vm_uuid="u",
            vm_name="vm1",
            created=datetime.now(UTC),
            vm={"name": "vm1"},
            snapshot_uuid="s",
            disks=[DiskImage("d", 0, "VIRTIO_DISK", len(data), bs, bm, serial=1)],
        )
        with pytest.raises(RepoError, match="blocks were lost"):
            repo.save_point(point)
        assert repo.list_points() == []


def test_the_index_is_built_after_open_and_its_first_use_waits_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backup takes its snapshot and clone while the index is built; a block lookup
    before the build is done waits for it and then sees every stored block."""
    from hcbak.repo.index import CompactIndex

    root = make_repo(tmp_path / "r")
    data = disk_bytes(3, 6)
    with open_repo(root, passphrase=PASS) as repo:
        write_point(repo, data)
    release = threading.Event()
    real = CompactIndex.add_segment

    def held(self: CompactIndex, packs: list[str], raw: bytes, *skip: object) -> None:
        assert release.wait(10), "the test never let the build go on"
        real(self, packs, raw, *skip)  # type: ignore[arg-type]

    monkeypatch.setattr(CompactIndex, "add_segment", held)
    with open_repo(root, passphrase=PASS) as repo:  # returns with the build held
        seen: list[bool] = []
        lookup = threading.Thread(
            target=lambda: seen.append(repo.has_block(repo.block_id(data[:BS])))
        )
        lookup.start()
        lookup.join(0.2)
        assert lookup.is_alive() and not seen  # waits for the index
        release.set()
        lookup.join(10)
        assert seen == [True]
        assert read_disk(repo, repo.list_points()[0].id) == data


def test_a_failed_index_build_fails_the_first_use_not_silently(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hcbak.repo.index import CompactIndex

    root = make_repo(tmp_path / "r")
    with open_repo(root, passphrase=PASS) as repo:
        write_point(repo, disk_bytes(4, 3))

    def broken(self: CompactIndex, n: int) -> None:
        raise MemoryError

    monkeypatch.setattr(CompactIndex, "reserve", broken)  # the build's first step
    with open_repo(root, passphrase=PASS, lock=None) as repo:
        with pytest.raises(MemoryError):
            repo.has_block(b"\x01" * 16)
        with pytest.raises(MemoryError):  # every later use, too
            len(repo.index)


def test_an_unreadable_index_segment_still_fails_the_open(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "r")
    with open_repo(root, passphrase=PASS) as repo:
        write_point(repo, disk_bytes(5, 3))
    segment = next((root / "index").iterdir())
    segment.unlink()
    segment.mkdir()  # EISDIR on read: an OS error, not damage
    with pytest.raises(RepoError):
        with open_repo(root, passphrase=PASS, lock=None):
            pass


@given(
    st.lists(st.integers(0, 5), min_size=0, max_size=40),
    st.sets(st.integers(0, 7), max_size=4),
)
def test_block_map_positions_of_finds_every_aligned_occurrence_and_nothing_else(
    layout: list[int], wanted: set[int]
) -> None:
    """Ids 1..5 are built so that one id's tail and the next id's head spell id 7:
    a match across two ids must not count."""
    ids = {k: bytes([k]) * 8 + bytes([k + 1]) * 8 for k in range(1, 6)}
    ids[0] = ZERO_BLOCK
    ids[6] = b"\xee" * 16  # never in a map
    ids[7] = bytes([2]) * 8 + bytes([2]) * 8  # the tail of id 1 + the head of id 2
    bm = BlockMap(len(layout))
    for i, k in enumerate(layout):
        bm.set(i, ids[k])
    got = bm.positions_of({ids[k] for k in wanted})
    assert got == [i for i, k in enumerate(layout) if k in wanted and k != 0]


def _forge_point(repo: Repository, point: Point, header_edit: dict[str, object]) -> str:
    """Write a manifest whose header says what `header_edit` says (an unencrypted
    repository: anyone who can write the folder can do this)."""
    from hcbak.repo import points as points_mod

    real_header = points_mod._header
    forged = Point(**{**point.__dict__, "id": repo.new_point_id()})

    def edited(p: Point) -> dict[str, object]:
        h = real_header(p)
        for key, value in header_edit.items():
            if key.startswith("disk."):
                h["disks"][0][key[5:]] = value
            else:
                h[key] = value
        return h

    points_mod._header = edited  # type: ignore[assignment]
    try:
        data = points_mod.encode_manifest(forged, repo.envelope)
    finally:
        points_mod._header = real_header
    repo.store.put(f"points/{forged.id}", data)
    return forged.id


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        ({"disk.capacity": BS + BS // 2}, "do not cover its capacity"),
        ({"disk.n_blocks": 1}, "do not cover its capacity"),
        ({"created": "2026-11-01T10:00:00"}, "malformed"),
    ],
    ids=["capacity-shorter-than-map", "map-longer-than-disks", "created-without-offset"],
)
def test_a_manifest_that_contradicts_itself_is_damage_and_hides_no_other_point(
    tmp_path: Path, edit: dict[str, object], why: str
) -> None:
    root = make_repo(tmp_path / "repo", encrypted=False)
    with open_repo(root) as repo:
        good = write_point(repo, disk_bytes(3, 3), created=datetime(2026, 11, 2, tzinfo=UTC))
        forged = _forge_point(repo, good, edit)
        with pytest.raises(IntegrityError, match=why):
            repo.load_point(forged)
        listed = [p.id for p in repo.list_points()]
        if "created" in edit:  # a listing reads only headers: this one is refused there too
            assert listed == [good.id] and forged in repo.unreadable_points
        else:
            assert sorted(listed) == sorted([good.id, forged])
        assert read_disk(repo, good.id) == disk_bytes(3, 3)
