"""A minimal pure-Python qcow2 reader, written for tests only.

It follows the spec independently of hcbak's writer (header fields, L1 -> L2 -> data,
refcounts) so a writer bug cannot hide behind a shared helper.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

OFFSET_MASK = 0x00FFFFFFFFFFFE00  # bits 9-55 of L1/L2 entries


@dataclass
class Qcow2Image:
    data: bytes
    cluster_size: int
    size: int
    l1_size: int
    l1_offset: int
    refcount_table_offset: int
    refcount_table_clusters: int
    refcount_order: int
    version: int

    @classmethod
    def parse(cls, data: bytes) -> Qcow2Image:
        magic, version = struct.unpack_from(">4sI", data, 0)
        assert magic == b"QFI\xfb", magic
        cluster_bits = struct.unpack_from(">I", data, 20)[0]
        size = struct.unpack_from(">Q", data, 24)[0]
        assert struct.unpack_from(">I", data, 32)[0] == 0, "encrypted"
        l1_size = struct.unpack_from(">I", data, 36)[0]
        l1_offset, rt_offset = struct.unpack_from(">QQ", data, 40)
        rt_clusters = struct.unpack_from(">I", data, 56)[0]
        refcount_order = struct.unpack_from(">I", data, 96)[0] if version >= 3 else 4
        return cls(
            data,
            1 << cluster_bits,
            size,
            l1_size,
            l1_offset,
            rt_offset,
            rt_clusters,
            refcount_order,
            version,
        )

    def _u64(self, offset: int) -> int:
        return int(struct.unpack_from(">Q", self.data, offset)[0])

    def host_offset(self, guest_cluster: int) -> int | None:
        """Host offset of a guest cluster, None when unallocated (reads as zeros)."""
        l2_entries = self.cluster_size // 8
        l1_index, l2_index = divmod(guest_cluster, l2_entries)
        assert l1_index < self.l1_size
        l2 = self._u64(self.l1_offset + 8 * l1_index) & OFFSET_MASK
        if not l2:
            return None
        entry = self._u64(l2 + 8 * l2_index)
        assert not entry & (1 << 62), "compressed cluster"
        if entry & 1:
            return None  # all-zeros flag
        return (entry & OFFSET_MASK) or None

    def read_all(self) -> bytes:
        out = bytearray()
        clusters = -(-self.size // self.cluster_size)
        for c in range(clusters):
            host = self.host_offset(c)
            if host is None:
                out += bytes(self.cluster_size)
            else:
                out += self.data[host : host + self.cluster_size]
        return bytes(out[: self.size])

    def refcount(self, host_cluster: int) -> int:
        bits = 1 << self.refcount_order
        per_block = self.cluster_size * 8 // bits
        block, index = divmod(host_cluster, per_block)
        if block >= self.refcount_table_clusters * self.cluster_size // 8:
            return 0
        rb = self._u64(self.refcount_table_offset + 8 * block) & ~0x1FF
        if not rb:
            return 0
        assert bits == 16
        return int(struct.unpack_from(">H", self.data, rb + 2 * index)[0])
