"""docs/format.md is complete: a reader written from that page alone restores the golden
repository bit-exact and finds every rule the page states true of it.

The reader below deliberately does not import hcbak.repo (only the stdlib and the
libraries the page names: lz4, zstandard, cryptography and xxhash for the block ids).
When it and hcbak disagree, either the page or hcbak is wrong.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import lz4.frame
import pytest
import xxhash
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hcbak.secrets import SecretRef

GOLDEN = Path(__file__).parent.parent / "data" / "golden-v1"
PASSPHRASE = "golden-v1 passphrase"
EXPECTED = {  # the same disks tests/repo/test_golden.py restores through hcbak
    "web": "76f789f9c0eeb663d02493b266b8709cefb1287fdbaea8adc27f79d87ffd0675",
    "db": "2ad8eda4ad4ffd0c8aedcdd8f130b2a6001dd7c2a8ae8a721f2835810d06bdf2",
}
ZERO_BLOCK = bytes(16)
HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")
# "created": Python's datetime.isoformat() of a UTC time (fraction only when non-zero).
CREATED = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?\+00:00$")
DISK_TYPES = {"VIRTIO_DISK", "SCSI_DISK", "IDE_DISK", "NVRAM", "VTPM"}


def unwrap(config: dict, passphrase: str) -> tuple[bytes, int]:
    """(master key, id seed) from `config` ("config" in format.md)."""
    enc = config["encryption"]
    kek = hashlib.scrypt(
        passphrase.encode("utf-8"),
        salt=bytes.fromhex(enc["salt"]),
        n=enc["n"],
        r=enc["r"],
        p=enc["p"],
        maxmem=256 * enc["n"] * enc["r"] + (1 << 20),
        dklen=32,
    )
    wrapped = bytes.fromhex(enc["wrapped_key"])
    ad = b"hcbak-master-key-v1:" + config["repo_id"].encode("ascii")
    material = AESGCM(kek).decrypt(wrapped[:12], wrapped[12:], ad)
    assert len(material) == 40
    return material[:32], struct.unpack("<Q", material[32:])[0]


def decompress(codec: int, data: bytes, plain_len: int) -> bytes:
    """One frame and nothing after it ("Codecs"): what hcbak writes, checked strictly."""
    if codec == 0:
        out = data
    elif codec == 1:
        dec = lz4.frame.LZ4FrameDecompressor()
        out = dec.decompress(data)
        assert dec.eof and not dec.unused_data, "bytes after the lz4 frame"
    elif codec == 2:
        assert zstandard.get_frame_parameters(data).content_size == plain_len
        dobj = zstandard.ZstdDecompressor().decompressobj()
        out = dobj.decompress(data)
        assert dobj.eof and dobj.unused_data == b"", "bytes after the zstd frame"
    else:
        raise AssertionError(f"unknown codec {codec}")
    assert len(out) == plain_len
    return out


@dataclass
class Reader:
    root: Path
    config: dict
    key: AESGCM
    seed: int

    def open_sealed(self, stored: bytes, ad: bytes) -> bytes:
        return self.key.decrypt(stored[:12], stored[12:], ad)

    def envelope(self, data: bytes, pos: int, ad: bytes) -> tuple[bytes, int, int]:
        """(plaintext, codec, offset after it) of the envelope at `pos` ("Envelope")."""
        flags, codec, reserved, crc, plain_len, stored_len = struct.unpack_from(
            "<BBHIQQ", data, pos
        )
        assert flags == 1 and reserved == 0  # encrypted; other bits and reserved zero
        fields = struct.pack("<BBHQQ", flags, codec, reserved, plain_len, stored_len)
        stored = data[pos + 24 : pos + 24 + stored_len]
        assert len(stored) == stored_len
        assert zlib.crc32(fields + stored) == crc
        plain = decompress(codec, self.open_sealed(stored, ad + fields), plain_len)
        return plain, codec, pos + 24 + stored_len

    def segments(self) -> list[tuple[bytes, str, int, int, int]]:
        """Every index entry: (id, pack, offset, length, plain_len) ("Index segments")."""
        out = []
        for path in sorted((self.root / "index").iterdir()):
            data = path.read_bytes()
            assert hashlib.sha256(data).hexdigest() == path.name
            assert data[:8] == b"HCBKIDX1"
            plain, codec, end = self.envelope(data, 8, b"hcbak-index-v1")
            assert codec in (0, 2) and end == len(data)  # envelopes: zstd (or raw)
            (n_packs,) = struct.unpack_from("<I", plain, 0)
            packs = [plain[4 + 32 * i : 36 + 32 * i].hex() for i in range(n_packs)]
            pos = 4 + 32 * n_packs
            (n,) = struct.unpack_from("<I", plain, pos)
            assert len(plain) == pos + 4 + 32 * n
            ids = []
            for bid, p, off, ln, pl in struct.iter_unpack("<16sIIII", plain[pos + 4 :]):
                out.append((bid, packs[p], off, ln, pl))
                ids.append(bid)
            assert ids == sorted(ids)
        return out

    def pack_blobs(self, path: Path) -> dict[bytes, tuple[int, int, bytes]]:
        """id -> (offset, frame length, plaintext) of one pack, checked ("Packs")."""
        data = path.read_bytes()
        assert path.parent.name == path.name[:2] and HEX64.match(path.name)
        assert hashlib.sha256(data).hexdigest() == path.name
        assert struct.unpack_from("<8sII", data, 0) == (b"HCBKPACK", 1, 0)
        table_off, count, table_crc, total, magic = struct.unpack_from(
            "<QIIQ8s", data, len(data) - 32
        )
        assert magic == b"HCBKPEND" and total == len(data)
        table = data[table_off : table_off + 36 * count]
        assert zlib.crc32(table) == table_crc and table_off + 36 * count + 32 == len(data)
        blobs = {}
        expect = 16  # blobs are contiguous: first at 16, the table right after the last
        for bid, off, length, plain_len, reserved in struct.iter_unpack("<16sQIII", table):
            assert off == expect and reserved == 0
            expect = off + length
            frame = data[off : off + length]
            fid, flags, codec, res, pl, stored_len, crc = struct.unpack_from("<16sBBHIII", frame)
            assert (fid, flags, res, pl) == (bid, 1, 0, plain_len)
            assert length == 32 + stored_len
            assert zlib.crc32(frame[32:], zlib.crc32(frame[:28])) == crc
            plain = decompress(codec, self.open_sealed(frame[32:], bid), pl)
            assert xxhash.xxh3_128_digest(plain, seed=self.seed) == bid
            blobs[bid] = (off, length, plain)
        assert expect == table_off
        return blobs

    def points(self) -> list[tuple[dict, bytes]]:
        """(header, block maps) of every manifest ("Restore points")."""
        out = []
        for path in sorted((self.root / "points").iterdir()):
            assert HEX32.match(path.name)
            data = path.read_bytes()
            assert data[:8] == b"HCBKPNT1"
            ad = b"hcbak-point-v1:" + path.name.encode()
            header, codec1, pos = self.envelope(data, 8, ad + b":header")
            maps, codec2, end = self.envelope(data, pos, ad + b":maps")
            assert {codec1, codec2} <= {0, 2} and end == len(data)
            h = json.loads(header)
            assert h["id"] == path.name and h["version"] == 1
            out.append((h, maps))
        return out


@pytest.fixture(scope="module")
def reader() -> Reader:
    config = json.loads((GOLDEN / "config").read_text("utf-8"))
    assert config["format"] == "hcbak-repository" and config["version"] == 1
    assert CREATED.match(config["created"])
    master, seed = unwrap(config, PASSPHRASE)
    assert 0 <= seed < 1 << 64
    return Reader(GOLDEN, config, AESGCM(master), seed)


def test_a_reader_written_from_the_page_restores_the_golden_disks(reader: Reader) -> None:
    block_size = reader.config["block_size"]
    index = reader.segments()
    blobs: dict[bytes, bytes] = {}
    for sub in sorted((GOLDEN / "packs").iterdir()):
        for path in sorted(sub.iterdir()):
            for bid, (off, length, plain) in reader.pack_blobs(path).items():
                assert len(plain) == block_size
                blobs[bid] = plain
                assert any(e == (bid, path.name, off, length, block_size) for e in index)
    restored = {}
    for h, maps in reader.points():
        assert CREATED.match(h["created"])
        at, out = 0, b""
        assert h["disks"] == sorted(h["disks"], key=lambda d: (d["slot"], d["uuid"]))
        for d in h["disks"]:
            assert d["block_size"] == block_size  # the disk's own value; equal today
            assert d["n_blocks"] == -(-d["capacity"] // d["block_size"])
            assert d["type"] in DISK_TYPES and isinstance(d["slot"], int)
            image = b"".join(
                bytes(d["block_size"]) if bid == ZERO_BLOCK else blobs[bid]
                for bid in (maps[at + 16 * i : at + 16 * (i + 1)] for i in range(d["n_blocks"]))
            )
            at += 16 * d["n_blocks"]
            out += image[: d["capacity"]]  # a restore is exactly `capacity` bytes
        assert at == len(maps)
        restored[h["vm_name"]] = hashlib.sha256(out).hexdigest()
    assert restored == EXPECTED


def test_point_times_are_utc_and_order_the_listing(reader: Reader) -> None:
    created = {h["vm_name"]: datetime.fromisoformat(h["created"]) for h, _ in reader.points()}
    assert all(t.utcoffset() == timedelta(0) for t in created.values())
    assert created["web"] < created["db"]  # `hcbak` lists web, then db
    assert created["db"] == datetime(2026, 11, 27, 2, 0, tzinfo=UTC)


def test_the_passphrase_is_its_utf8_bytes_and_a_file_loses_only_trailing_newlines(
    reader: Reader, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = reader.config
    (tmp_path / "crlf").write_bytes(PASSPHRASE.encode() + b"\r\n\n\r\n")
    from_file = SecretRef(file=str(tmp_path / "crlf")).resolve().reveal()
    assert from_file == PASSPHRASE and unwrap(config, from_file)[1] == reader.seed
    # Spaces are part of the passphrase, and an environment variable is taken as is.
    (tmp_path / "space").write_bytes(PASSPHRASE.encode() + b" \n")
    monkeypatch.setenv("HCBAK_T_PASS", PASSPHRASE + "\n")
    for ref in (SecretRef(file=str(tmp_path / "space")), SecretRef(env="HCBAK_T_PASS")):
        with pytest.raises(InvalidTag):
            unwrap(config, ref.resolve().reveal())
