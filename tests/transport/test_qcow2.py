"""The streaming qcow2 writer: exact length, readable by an independent reader and by qemu."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hcbak.errors import TransportError
from hcbak.transport.qcow2 import (
    choose_cluster_size,
    plan_qcow2,
    qcow2_image,
    stream_qcow2,
)

from .qcow2_reader import Qcow2Image

QEMU_IMG = shutil.which("qemu-img")
needs_qemu = pytest.mark.skipif(
    QEMU_IMG is None, reason="qemu-img not installed (apt-get install qemu-utils)"
)


def pattern(index: int, size: int) -> bytes:
    """Distinct, non-zero, deterministic bytes for a guest cluster."""
    seed = hashlib.sha256(index.to_bytes(8, "big")).digest()
    return (seed * (size // len(seed) + 1))[:size]


def raw_image(capacity: int, cluster_size: int, clusters: list[int]) -> bytes:
    raw = bytearray(capacity)
    for c in clusters:
        start = c * cluster_size
        chunk = pattern(c, cluster_size)[: max(0, min(cluster_size, capacity - start))]
        raw[start : start + len(chunk)] = chunk
    return bytes(raw)


def render(capacity: int, cluster_size: int, clusters: list[int]) -> tuple[int, bytes]:
    def read_cluster(c: int) -> bytes:
        start = c * cluster_size
        return pattern(c, cluster_size)[: min(cluster_size, capacity - start)]

    size, chunks = qcow2_image(capacity, clusters, read_cluster, cluster_size)
    return size, b"".join(chunks)


@st.composite
def images(draw: st.DrawFn) -> tuple[int, int, list[int]]:
    cluster_size = draw(st.sampled_from([512, 1024, 4096, 65536]))
    capacity = draw(st.integers(1, 600)) * 512 * draw(st.sampled_from([1, 8, 64]))
    guest = -(-capacity // cluster_size)
    clusters = sorted(draw(st.sets(st.integers(0, guest - 1), max_size=min(guest, 300))))
    return capacity, cluster_size, clusters


@settings(max_examples=60, deadline=None)
@given(images())
def test_computed_length_equals_streamed_bytes_and_content_reads_back(
    image: tuple[int, int, list[int]],
) -> None:
    capacity, cluster_size, clusters = image
    size, data = render(capacity, cluster_size, clusters)
    assert len(data) == size
    parsed = Qcow2Image.parse(data)
    assert parsed.version == 3 and parsed.size == capacity
    assert parsed.read_all() == raw_image(capacity, cluster_size, clusters)
    # Every host cluster is referenced once; nothing past the end is counted.
    host_clusters = size // cluster_size
    assert all(parsed.refcount(h) == 1 for h in range(host_clusters))
    assert parsed.refcount(host_clusters) == 0


def test_zero_clusters_are_not_stored() -> None:
    capacity = 64 * 1024 * 1024
    empty = plan_qcow2(capacity, [], 65536)
    one = plan_qcow2(capacity, [5], 65536)
    # One data cluster plus one L2 table; header/L1/refcounts are tiny for 64 MiB.
    assert one.total_size - empty.total_size == 2 * 65536
    assert empty.total_size <= 4 * 65536


def test_streaming_accepts_an_iterable_of_cluster_data() -> None:
    capacity, cs, clusters = 1 << 20, 65536, [0, 3, 15]
    layout = plan_qcow2(capacity, clusters, cs)
    data = b"".join(stream_qcow2(layout, (pattern(c, cs) for c in clusters)))
    assert Qcow2Image.parse(data).read_all() == raw_image(capacity, cs, clusters)


def test_missing_cluster_data_is_an_error_not_a_short_image() -> None:
    layout = plan_qcow2(1 << 20, [0, 1], 65536)
    with pytest.raises(TransportError, match="1 of 2"):
        b"".join(stream_qcow2(layout, [bytes(65536)]))


def test_oversized_cluster_data_is_rejected() -> None:
    layout = plan_qcow2(1 << 20, [0], 65536)
    with pytest.raises(TransportError, match="exceeds"):
        b"".join(stream_qcow2(layout, [bytes(65537)]))


@pytest.mark.parametrize(
    ("clusters", "message"),
    [([3, 1], "ascending"), ([1, 1], "ascending"), ([16], "beyond")],
)
def test_bad_cluster_lists_are_rejected(clusters: list[int], message: str) -> None:
    with pytest.raises(TransportError, match=message):
        plan_qcow2(1 << 20, clusters, 65536)


def test_cluster_size_follows_block_size_within_qcow2_limits() -> None:
    assert choose_cluster_size(1 << 20) == 1 << 20
    assert choose_cluster_size(256 * 1024) == 256 * 1024
    assert choose_cluster_size(4 << 20) == 2 << 20
    assert choose_cluster_size(4096) == 65536
    assert choose_cluster_size(3 * 65536) == 65536


@needs_qemu
@pytest.mark.parametrize(
    ("capacity", "cluster_size"),
    [
        (4 * 1024 * 1024, 512),  # multi-cluster L1, many L2 tables and refcount blocks
        (6 * 1024 * 1024 + 4096, 65536),  # capacity not a cluster multiple
        (8 * 1024 * 1024, 1024 * 1024),  # repo block size as cluster size
    ],
)
def test_qemu_img_check_is_clean_and_compare_identical(
    tmp_path: Path, capacity: int, cluster_size: int
) -> None:
    guest = -(-capacity // cluster_size)
    clusters = [c for c in range(guest) if c % 3 == 0 or c == guest - 1]
    raw = tmp_path / "disk.raw"
    raw.write_bytes(raw_image(capacity, cluster_size, clusters))
    out = tmp_path / "disk.qcow2"
    size, data = render(capacity, cluster_size, clusters)
    out.write_bytes(data)
    assert out.stat().st_size == size
    assert QEMU_IMG is not None
    check = subprocess.run([QEMU_IMG, "check", str(out)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "No errors were found" in check.stdout
    compare = subprocess.run(
        [QEMU_IMG, "compare", "-f", "raw", "-F", "qcow2", str(raw), str(out)],
        capture_output=True,
        text=True,
    )
    assert compare.returncode == 0, compare.stdout + compare.stderr
    assert "identical" in compare.stdout
