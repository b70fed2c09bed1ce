"""The per-disk pipeline, reader and device lookup on real files and a real repository."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hcbak.engine.cbt import full_plan, incremental_plan, merge_ranges
from hcbak.engine.pipeline import back_up_disk, split_by_data
from hcbak.engine.report import DiskReport
from hcbak.errors import Interrupted, TransportError
from hcbak.hypercore.intervals import PairArray
from hcbak.repo import ZERO_BLOCK, init_repo, open_repo
from hcbak.transport.device import by_id_path, locate_device
from hcbak.transport.reader import DiskReader, blocks_with_data

BS = 4096


def _content(repo: Any, block_map: Any, capacity: int) -> bytes:
    parts = []
    for i in range(len(block_map)):
        bid = block_map.get(i)
        parts.append(bytes(BS) if bid == ZERO_BLOCK else repo.get_block(bid))
    return b"".join(parts)[:capacity]


writes = st.lists(
    st.tuples(st.integers(0, 40 * BS), st.binary(min_size=1, max_size=3 * BS)), max_size=12
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(capacity=st.integers(1, 40 * BS), ops=writes, threads=st.integers(1, 3))
def test_full_backup_of_a_sparse_file_stores_exactly_its_content(
    tmp_path_factory: pytest.TempPathFactory, capacity: int, ops: list[tuple[int, bytes]],
    threads: int,
) -> None:  # fmt: skip
    tmp = tmp_path_factory.mktemp("p")
    disk = tmp / "disk"
    with open(disk, "wb") as fh:
        fh.truncate(capacity)
        for offset, data in ops:
            if offset < capacity:
                fh.seek(offset)
                fh.write(data[: capacity - offset])
    init_repo(tmp / "repo", block_size=256 << 10)
    with open_repo(tmp / "repo", lock=None) as repo, DiskReader(disk) as reader:
        report = DiskReport("d", 0, "VIRTIO_DISK", capacity)
        plan = full_plan(capacity, BS, "no base")
        result = back_up_disk(reader, repo, plan, None, report, block_size=BS, threads=threads)
        content = disk.read_bytes()
        assert _content(repo, result.block_map, capacity) == content
        # Every all-zero block counts as zero, whether skipped as a hole or read and found
        # zero (a written run of zeros): so zero and read may overlap, but every block with
        # data is read and no block twice.
        blocks = [content[i * BS : (i + 1) * BS] for i in range(plan.n_blocks)]
        zero_blocks = sum(not any(b) for b in blocks)
        assert report.blocks_zero == zero_blocks
        assert plan.n_blocks - zero_blocks <= report.blocks_read <= plan.n_blocks


def _sparse_disk(tmp_path: Path, *, random_tail: bool = False) -> Path:
    """A 64-block sparse file with data at block 10 (and random data at 60..63), and
    an empty repository beside it; skips where the filesystem cannot tell holes."""
    disk = tmp_path / "disk"
    with open(disk, "wb") as fh:
        fh.truncate(64 * BS)
        os.pwrite(fh.fileno(), b"x" * BS, 10 * BS)
        if random_tail:
            os.pwrite(fh.fileno(), os.urandom(4 * BS), 60 * BS)
    if DiskReader(disk).data_ranges() in (None, [(0, 64 * BS)]):
        pytest.skip("this filesystem does not report holes (SEEK_DATA)")
    init_repo(tmp_path / "repo", block_size=256 << 10)
    return disk


def test_holes_are_not_read_and_incremental_keeps_unchanged_blocks(tmp_path: Path) -> None:
    disk = _sparse_disk(tmp_path)
    with open_repo(tmp_path / "repo", lock=None) as repo, DiskReader(disk) as reader:
        first = back_up_disk(reader, repo, full_plan(64 * BS, BS, "no base"),
                             None, DiskReport("d", 0, "V", 64 * BS), block_size=BS)  # fmt: skip
        assert first.report.blocks_read < 64 and first.report.blocks_zero >= 60
        with open(disk, "r+b") as fh:
            os.pwrite(fh.fileno(), b"y" * 10, 20 * BS + 5)
        plan = incremental_plan([(20 * BS + 5, 20 * BS + 15)], 64 * BS, BS)
        second = back_up_disk(reader, repo, plan, first.block_map,
                              DiskReport("d", 0, "V", 64 * BS), block_size=BS)  # fmt: skip
        assert (second.report.blocks_read, second.report.blocks_changed) == (1, 1)
        assert second.block_map.get(10) == first.block_map.get(10)
        assert _content(repo, second.block_map, 64 * BS) == disk.read_bytes()


def test_cancel_stops_the_pipeline_with_interrupted(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.write_bytes(os.urandom(16 * BS))
    init_repo(tmp_path / "repo", block_size=256 << 10)
    cancel = threading.Event()
    cancel.set()
    with open_repo(tmp_path / "repo", lock=None) as repo, DiskReader(disk) as reader:
        with pytest.raises(Interrupted):
            report = DiskReport("d", 0, "V", 16 * BS)
            plan = full_plan(16 * BS, BS, "x")
            back_up_disk(reader, repo, plan, None, report, block_size=BS, cancel=cancel)


def test_reader_pads_the_last_partial_block_with_zeros(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.write_bytes(b"abc")
    with DiskReader(disk) as reader:
        assert reader.pread(0, 8) == b"abc" + bytes(5)
        assert reader.pread(8, 4) == bytes(4)


def test_locate_device_by_id_then_by_new_device_of_matching_size(tmp_path: Path) -> None:
    uuid = "0123456789abcdef0123456789abcdef"
    link = by_id_path(tmp_path, uuid)
    link.parent.mkdir(parents=True)
    link.write_bytes(b"")
    assert locate_device(tmp_path, uuid, 0, timeout=0) == link
    before = {"vda"}
    (tmp_path / "vda").write_bytes(bytes(100))
    (tmp_path / "vdb").write_bytes(bytes(300))  # appeared, wrong size
    (tmp_path / "vdc").write_bytes(bytes(200))  # appeared, clone's size
    assert locate_device(tmp_path, "other-uuid", 200, before=before, timeout=0) == tmp_path / "vdc"
    with pytest.raises(TransportError, match="did not appear"):
        locate_device(tmp_path, "missing", 999, before=before, timeout=0.05)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    written=st.lists(st.tuples(st.integers(0, 63), st.integers(1, 3 * BS)), max_size=8),
    spans=st.lists(st.tuples(st.integers(0, 64), st.integers(0, 8)), max_size=6),
)
def test_hole_probing_within_the_plan_finds_what_a_whole_device_walk_finds(
    tmp_path: Path, written: list[tuple[int, int]], spans: list[tuple[int, int]]
) -> None:
    """An incremental probes only the spans it reads: the blocks with data inside them
    must be exactly those a walk over every extent of the device finds there."""
    disk = tmp_path / "probe-disk"
    disk.unlink(missing_ok=True)
    with open(disk, "wb") as fh:
        fh.truncate(64 * BS)
        for block, length in written:
            os.pwrite(fh.fileno(), b"d" * min(length, 64 * BS - block * BS), block * BS)
    with DiskReader(disk) as reader:
        whole = reader.data_ranges()
        byte_spans = [(a * BS, min(a + n, 64) * BS) for a, n in sorted(spans)]
        within = reader.data_ranges(byte_spans)
    assume(whole is not None)
    assert within is not None

    def blocks(ranges: list[tuple[int, int]]) -> set[int]:
        return {i for a, b in blocks_with_data(ranges, BS) for i in range(a, b)}

    in_spans = {i for a, b in byte_spans for i in range(a // BS, b // BS)}
    assert blocks(within) == blocks(whole) & in_spans


block_ranges = st.lists(st.tuples(st.integers(0, 80), st.integers(1, 12)), max_size=8).map(
    lambda pairs: merge_ranges((a, a + n) for a, n in pairs)
)


@given(plan=block_ranges, data=block_ranges)
def test_splitting_the_plan_by_data_ranges_matches_a_per_block_split(
    plan: PairArray, data: PairArray
) -> None:
    inside, outside = split_by_data(plan, data)
    planned = [i for a, b in plan for i in range(a, b)]
    with_data = {i for a, b in data for i in range(a, b)}
    assert [i for a, b in inside for i in range(a, b)] == [i for i in planned if i in with_data]
    assert [i for a, b in outside for i in range(a, b)] == [
        i for i in planned if i not in with_data
    ]
    assert all(a < b for a, b in [*inside, *outside])


def test_a_sparse_2_tib_full_read_plans_ranges_not_blocks() -> None:
    """64 data blocks spread over 2 M: a few dozen ranges each way, not 16 MiB of
    block numbers (issue 21)."""
    n = 2 << 20
    data = merge_ranges((k * (n // 64), k * (n // 64) + 1) for k in range(64))
    inside, outside = split_by_data(full_plan(n * BS, BS, "x").ranges, data)
    assert (len(inside), len(outside)) == (64, 64)
    assert sum(b - a for a, b in outside) == n - 64


def test_an_incremental_zeroes_blocks_that_became_holes_and_counts_them_changed(
    tmp_path: Path,
) -> None:
    disk = _sparse_disk(tmp_path, random_tail=True)
    with open_repo(tmp_path / "repo", lock=None) as repo, DiskReader(disk) as reader:
        first = back_up_disk(reader, repo, full_plan(64 * BS, BS, "no base"),
                             None, DiskReport("d", 0, "V", 64 * BS), block_size=BS)  # fmt: skip
        assert first.block_map.count_stored(0, 64) == 5
        with open(disk, "r+b") as fh:  # blocks 60..63 become a hole again
            fh.truncate(58 * BS)
            fh.truncate(64 * BS)
        plan = incremental_plan([(56 * BS, 64 * BS)], 64 * BS, BS)
        report = DiskReport("d", 0, "V", 64 * BS)
        second = back_up_disk(reader, repo, plan, first.block_map, report, block_size=BS)
        assert (report.blocks_read, report.blocks_changed, report.blocks_zero) == (0, 4, 8)
        assert report.bytes_changed == 4 * BS
        assert second.block_map.count_stored(0, 64) == 1
        assert first.block_map.count_stored(0, 64) == 5  # the base map is untouched
        assert _content(repo, second.block_map, 64 * BS) == disk.read_bytes()
