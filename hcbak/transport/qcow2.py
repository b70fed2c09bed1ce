"""Streaming qcow2 writer: a sparse disk image as one byte stream of known length.

HyperCore's `PUT /VirtualDisk/upload` needs an exact `Content-Length` (chunked bodies are
rejected), and a restore should not write a temp file as large as the disk. So the whole
qcow2 layout is computed up front from the capacity and the sorted list of allocated
(non-zero) guest clusters, then the image is generated front to back:

    cluster 0              header (version 3, 104-byte header, no extensions)
    L1 table               one 8-byte entry per 2**(cluster_bits-3) guest clusters
    refcount table         one 8-byte entry per refcount block
    refcount blocks        16-bit refcounts (refcount_order 4): every host cluster = 1
    L2 tables              only for L1 ranges that hold at least one allocated cluster
    data clusters          allocated guest clusters, in guest order

Unallocated guest clusters read as zeros (no backing file), so zero blocks are never
sent. Every metadata structure starts on a cluster boundary and every host cluster has
refcount 1, so L1/L2 entries carry the COPIED flag (bit 63): `qemu-img check` reports an
OFLAG_COPIED error when a refcount-1 cluster lacks it. Facts from qemu's
docs/interop/qcow2.txt; the code is ours.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from hcbak.errors import TransportError

QCOW2_MAGIC = b"QFI\xfb"
QCOW2_VERSION = 3
HEADER_LENGTH = 104  # version 3 header without the optional compression_type field
REFCOUNT_ORDER = 4  # 16-bit refcounts, qemu's default
REFCOUNT_BYTES = (1 << REFCOUNT_ORDER) // 8
OFLAG_COPIED = 1 << 63  # refcount is exactly 1: the cluster may be written in place
MIN_CLUSTER_SIZE = 64 * 1024  # qemu's default; smaller clusters mean huge metadata
MAX_CLUSTER_SIZE = 2 * 1024 * 1024  # the qcow2 limit (cluster_bits <= 21)
DEFAULT_CLUSTER_SIZE = MIN_CLUSTER_SIZE

_HEADER = struct.Struct(">4sIQIIQIIQQIIQQQQII")


def choose_cluster_size(block_size: int) -> int:
    """The qcow2 cluster size for a repository block size.

    The block size itself when it is a power of two in 64 KiB..2 MiB: one repository
    block is then exactly one cluster (no splitting, fewest metadata entries). Larger
    blocks use 2 MiB clusters (a block spans several); smaller ones use 64 KiB.
    """
    if block_size <= 0 or block_size & (block_size - 1):
        return DEFAULT_CLUSTER_SIZE
    return max(MIN_CLUSTER_SIZE, min(MAX_CLUSTER_SIZE, block_size))


@dataclass(frozen=True)
class Qcow2Layout:
    """Where every structure of the image lives; `total_size` is the exact byte length."""

    capacity: int
    cluster_size: int
    clusters: Sequence[int] = field(repr=False)  # allocated guest clusters, ascending
    l1_entries: int
    l1_offset: int
    l1_clusters: int
    refcount_table_offset: int
    refcount_table_clusters: int
    refcount_blocks_offset: int
    refcount_blocks: int
    l2_indexes: tuple[int, ...] = field(repr=False)  # L1 slots that own an L2 table
    l2_offset: int
    data_offset: int
    total_clusters: int

    @property
    def cluster_bits(self) -> int:
        return self.cluster_size.bit_length() - 1

    @property
    def l2_entries(self) -> int:
        """Guest clusters mapped by one L2 table (8-byte entries)."""
        return self.cluster_size // 8

    @property
    def total_size(self) -> int:
        return self.total_clusters * self.cluster_size

    @property
    def data_clusters(self) -> int:
        return len(self.clusters)


def plan_qcow2(
    capacity: int, clusters: Sequence[int], cluster_size: int = DEFAULT_CLUSTER_SIZE
) -> Qcow2Layout:
    """Compute the complete layout of an image with `clusters` allocated.

    `clusters` must be strictly ascending guest cluster indexes below
    ceil(capacity / cluster_size). Raises TransportError on bad input.
    """
    _check_cluster_size(cluster_size)
    if capacity <= 0:
        raise TransportError(f"qcow2: capacity must be positive, got {capacity}")
    guest_clusters = -(-capacity // cluster_size)
    _check_clusters(clusters, guest_clusters)
    l2_entries = cluster_size // 8
    l1_entries = -(-guest_clusters // l2_entries)
    l1_clusters = -(-(l1_entries * 8) // cluster_size)
    l2_indexes = _distinct_l1_slots(clusters, l2_entries)
    fixed = 1 + l1_clusters + len(l2_indexes) + len(clusters)
    rt_clusters, rb_clusters = _refcount_sizes(fixed, cluster_size)
    l1_offset = cluster_size
    rt_offset = l1_offset + l1_clusters * cluster_size
    rb_offset = rt_offset + rt_clusters * cluster_size
    l2_offset = rb_offset + rb_clusters * cluster_size
    data_offset = l2_offset + len(l2_indexes) * cluster_size
    return Qcow2Layout(
        capacity=capacity,
        cluster_size=cluster_size,
        clusters=clusters,
        l1_entries=l1_entries,
        l1_offset=l1_offset,
        l1_clusters=l1_clusters,
        refcount_table_offset=rt_offset,
        refcount_table_clusters=rt_clusters,
        refcount_blocks_offset=rb_offset,
        refcount_blocks=rb_clusters,
        l2_indexes=l2_indexes,
        l2_offset=l2_offset,
        data_offset=data_offset,
        total_clusters=fixed + rt_clusters + rb_clusters,
    )


ClusterSource = Callable[[int], bytes] | Iterable[bytes]


def stream_qcow2(layout: Qcow2Layout, data: ClusterSource) -> Iterator[bytes]:
    """Yield the image as chunks (each at most one cluster, metadata tables whole).

    `data` is either a callback `read_cluster(guest_index) -> bytes` or an iterable
    giving the bytes of each allocated cluster in `layout.clusters` order (so a caller
    can prefetch in parallel). Each cluster's data may be shorter than the cluster size
    (the tail of the disk) and is padded with zeros; longer data is an error. The sum of
    the chunk lengths is exactly `layout.total_size`.
    """
    yield _header(layout)
    yield _l1_table(layout)
    yield _refcount_table(layout)
    for block in range(layout.refcount_blocks):
        yield _refcount_block(layout, block)
    yield from _l2_tables(layout)
    yield from _data_clusters(layout, data)


def qcow2_image(
    capacity: int,
    clusters: Sequence[int],
    data: ClusterSource,
    cluster_size: int = DEFAULT_CLUSTER_SIZE,
) -> tuple[int, Iterator[bytes]]:
    """Convenience: (exact length, chunk iterator) for an upload with Content-Length."""
    layout = plan_qcow2(capacity, clusters, cluster_size)
    return layout.total_size, stream_qcow2(layout, data)


# --- layout helpers -------------------------------------------------------------------


def _check_cluster_size(cluster_size: int) -> None:
    power_of_two = cluster_size > 0 and not cluster_size & (cluster_size - 1)
    if not power_of_two or not 512 <= cluster_size <= MAX_CLUSTER_SIZE:
        raise TransportError(
            f"qcow2: cluster size must be a power of two in 512..2 MiB, got {cluster_size}"
        )


def _check_clusters(clusters: Sequence[int], guest_clusters: int) -> None:
    previous = -1
    for index in clusters:
        if index <= previous:
            raise TransportError("qcow2: allocated clusters must be strictly ascending")
        previous = index
    if previous >= guest_clusters:
        raise TransportError(
            f"qcow2: cluster {previous} is beyond the disk ({guest_clusters} clusters)"
        )


def _distinct_l1_slots(clusters: Sequence[int], l2_entries: int) -> tuple[int, ...]:
    slots: list[int] = []
    for index in clusters:
        slot = index // l2_entries
        if not slots or slots[-1] != slot:
            slots.append(slot)
    return tuple(slots)


def _refcount_sizes(fixed_clusters: int, cluster_size: int) -> tuple[int, int]:
    """(refcount table clusters, refcount block count) covering themselves too.

    The refcount structures count their own clusters, so iterate to the fixed point;
    it converges in two or three rounds because each round adds few clusters.
    """
    per_block = cluster_size // REFCOUNT_BYTES
    per_table_cluster = cluster_size // 8
    table, blocks = 1, 1
    while True:
        total = fixed_clusters + table + blocks
        need_blocks = -(-total // per_block)
        need_table = -(-need_blocks // per_table_cluster)
        if (need_table, need_blocks) == (table, blocks):
            return table, blocks
        table, blocks = max(table, need_table), max(blocks, need_blocks)


# --- stream pieces --------------------------------------------------------------------


def _header(layout: Qcow2Layout) -> bytes:
    header = _HEADER.pack(
        QCOW2_MAGIC,
        QCOW2_VERSION,
        0,  # backing_file_offset
        0,  # backing_file_size
        layout.cluster_bits,
        layout.capacity,
        0,  # crypt_method: none
        layout.l1_entries,
        layout.l1_offset,
        layout.refcount_table_offset,
        layout.refcount_table_clusters,
        0,  # nb_snapshots
        0,  # snapshots_offset
        0,  # incompatible_features
        0,  # compatible_features
        0,  # autoclear_features
        REFCOUNT_ORDER,
        HEADER_LENGTH,
    )
    # The zero bytes after the header double as the end-of-extensions marker (type 0).
    return header.ljust(layout.cluster_size, b"\0")


def _l1_table(layout: Qcow2Layout) -> bytes:
    table = bytearray(layout.l1_clusters * layout.cluster_size)
    for n, slot in enumerate(layout.l2_indexes):
        struct.pack_into(
            ">Q", table, slot * 8, (layout.l2_offset + n * layout.cluster_size) | OFLAG_COPIED
        )
    return bytes(table)


def _refcount_table(layout: Qcow2Layout) -> bytes:
    table = bytearray(layout.refcount_table_clusters * layout.cluster_size)
    for block in range(layout.refcount_blocks):
        offset = layout.refcount_blocks_offset + block * layout.cluster_size
        struct.pack_into(">Q", table, block * 8, offset)
    return bytes(table)


def _refcount_block(layout: Qcow2Layout, block: int) -> bytes:
    per_block = layout.cluster_size // REFCOUNT_BYTES
    first = block * per_block
    used = max(0, min(per_block, layout.total_clusters - first))
    one = (1).to_bytes(REFCOUNT_BYTES, "big")
    return (one * used).ljust(layout.cluster_size, b"\0")


def _l2_tables(layout: Qcow2Layout) -> Iterator[bytes]:
    l2_entries = layout.l2_entries
    cs = layout.cluster_size
    clusters = layout.clusters
    position = 0  # index into clusters == data cluster number
    for slot in layout.l2_indexes:
        table = bytearray(cs)
        end = (slot + 1) * l2_entries
        while position < len(clusters) and clusters[position] < end:
            host = layout.data_offset + position * cs
            entry = clusters[position] - slot * l2_entries
            struct.pack_into(">Q", table, entry * 8, host | OFLAG_COPIED)
            position += 1
        yield bytes(table)


def _data_clusters(layout: Qcow2Layout, data: ClusterSource) -> Iterator[bytes]:
    cs = layout.cluster_size
    chunks: Iterable[bytes] = map(data, layout.clusters) if callable(data) else data
    count = 0
    for chunk in chunks:
        if count >= len(layout.clusters):
            raise TransportError("qcow2: more cluster data than allocated clusters")
        if len(chunk) > cs:
            raise TransportError(f"qcow2: cluster data of {len(chunk)} bytes exceeds {cs}")
        yield chunk if len(chunk) == cs else bytes(chunk).ljust(cs, b"\0")
        count += 1
    if count != len(layout.clusters):
        raise TransportError(
            f"qcow2: got data for {count} of {len(layout.clusters)} allocated clusters"
        )
