"""Read uploaded qcow2 images (v2/v3, uncompressed, no backing file) into raw files.

What HyperCore's upload does with `.qcow2`: convert to its own storage. We parse the
header, the L1 table and each L2 table, and copy allocated clusters to their guest
offsets in a sparse raw file. Compressed clusters, encryption, backing files and
external data files are refused (hcbak never produces them).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

MAGIC = b"QFI\xfb"
_OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00  # bits 9-55: host offset in L1/L2 entries
_COMPRESSED = 1 << 62
_ZERO_FLAG = 1  # v3 L2 entry bit 0: cluster reads as zeros


class Qcow2Error(ValueError):
    """The image is not a qcow2 the simulator can convert."""


def qcow2_to_raw(src: Path, dest: Path) -> int:
    """Convert `src` to a sparse raw `dest`; return the virtual size in bytes."""
    with open(src, "rb") as f, open(dest, "wb") as out:
        hdr = _read_header(f.read(112))
        size, cluster_bits = hdr["size"], hdr["cluster_bits"]
        cluster = 1 << cluster_bits
        l2_entries = cluster // 8
        out.truncate(size)
        fd, ofd = f.fileno(), out.fileno()
        l1_raw = os.pread(fd, 8 * hdr["l1_size"], hdr["l1_table_offset"])
        if len(l1_raw) != 8 * hdr["l1_size"]:
            raise Qcow2Error("truncated L1 table")
        for i, (l1,) in enumerate(struct.iter_unpack(">Q", l1_raw)):
            l2_off = l1 & _OFFSET_MASK
            if not l2_off:
                continue
            l2_raw = os.pread(fd, cluster, l2_off)
            if len(l2_raw) != cluster:
                raise Qcow2Error(f"truncated L2 table at {l2_off}")
            for j, (l2,) in enumerate(struct.iter_unpack(">Q", l2_raw)):
                guest = (i * l2_entries + j) * cluster
                if guest >= size:
                    break
                if l2 & _COMPRESSED:
                    raise Qcow2Error("compressed clusters are not supported")
                host = l2 & _OFFSET_MASK
                if not host or (l2 & _ZERO_FLAG and hdr["version"] >= 3):
                    continue
                length = min(cluster, size - guest)
                data = os.pread(fd, length, host)
                if len(data) != length:
                    raise Qcow2Error(f"truncated data cluster at {host}")
                if data.count(0) != length:
                    os.pwrite(ofd, data, guest)
    return size


def _read_header(raw: bytes) -> dict[str, int]:
    if len(raw) < 72 or raw[:4] != MAGIC:
        raise Qcow2Error("not a qcow2 image (bad magic)")
    (version, backing_off, _backing_len, cluster_bits, size, crypt, l1_size, l1_off) = (
        struct.unpack(">IQIIQIIQ", raw[4:48])
    )
    if version not in (2, 3):
        raise Qcow2Error(f"qcow2 version {version} is not supported")
    if backing_off:
        raise Qcow2Error("qcow2 images with a backing file are not supported")
    if crypt:
        raise Qcow2Error("encrypted qcow2 images are not supported")
    if not 9 <= cluster_bits <= 21:
        raise Qcow2Error(f"invalid cluster_bits {cluster_bits}")
    if version == 3 and len(raw) >= 80:
        (incompatible,) = struct.unpack(">Q", raw[72:80])
        if incompatible & ~1:  # bit 0 = dirty (refcounts only), harmless for reading
            raise Qcow2Error(f"unsupported incompatible features {incompatible:#x}")
    return {
        "version": version,
        "cluster_bits": cluster_bits,
        "size": size,
        "l1_size": l1_size,
        "l1_table_offset": l1_off,
    }
