"""Damaged-copy records: `damaged/<record id>`, which stored blob copies are known bad.

A copy is one (block id, pack, offset). Once a read proves a copy bad (verify
--read-data, a restore whose block fails its checksum, authentication or re-hash,
repair), a write-once record names it. Loading the index skips recorded copies, so
the id counts as absent for dedup: the next backup that sees the block stores a
healthy copy, which also makes older points that reference the id restorable again.
Records are small and rare; they are dropped only by prune, once their pack is gone
(docs/format.md, "Damaged copies").
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from hcbak.errors import IntegrityError
from hcbak.repo.codec import Envelope
from hcbak.repo.storage.base import ObjectMissingError, ObjectStore

DAMAGED_DIR = "damaged"
DAMAGED_MAGIC = b"HCBKDMG1"
DAMAGED_AD = b"hcbak-damaged-v1"
RECORD_ENTRY = struct.Struct("<16s32sQI")  # id, raw pack id, frame offset, frame length


@dataclass(frozen=True)
class DamagedCopy:
    """One stored copy of a block that failed its checks."""

    id: bytes
    pack: str
    offset: int
    length: int


def encode_record(copies: Iterable[DamagedCopy], envelope: Envelope) -> bytes:
    """Plaintext: count u32, then entries sorted by (id, pack, offset)."""
    ordered = sorted(set(copies), key=lambda c: (c.id, c.pack, c.offset))
    body = [struct.pack("<I", len(ordered))]
    body += [RECORD_ENTRY.pack(c.id, bytes.fromhex(c.pack), c.offset, c.length) for c in ordered]
    return DAMAGED_MAGIC + envelope.seal(b"".join(body), DAMAGED_AD)


def decode_record(data: bytes, envelope: Envelope, name: str) -> list[DamagedCopy]:
    what = f"damaged-copy record {name}"
    if hashlib.sha256(data).hexdigest() != name:
        raise IntegrityError(f"{what} content does not match its name")
    if data[:8] != DAMAGED_MAGIC:
        raise IntegrityError(f"{what} has a bad magic")
    plain, end = envelope.open(data, 8, DAMAGED_AD, what)
    if end != len(data) or len(plain) < 4:
        raise IntegrityError(f"{what} is malformed")
    (n,) = struct.unpack_from("<I", plain, 0)
    body = plain[4:]
    if len(body) != n * RECORD_ENTRY.size:
        raise IntegrityError(f"{what} is malformed")
    return [DamagedCopy(i, p.hex(), o, ln) for i, p, o, ln in RECORD_ENTRY.iter_unpack(body)]


def record_key(name: str) -> str:
    return f"{DAMAGED_DIR}/{name}"


def write_record(
    store: ObjectStore, copies: Iterable[DamagedCopy], envelope: Envelope
) -> str | None:
    """Write one record (write-once, named by its sha256); None when there is nothing."""
    copies = list(copies)
    if not copies:
        return None
    data = encode_record(copies, envelope)
    name = hashlib.sha256(data).hexdigest()
    store.put(record_key(name), data, if_absent=True)
    return name


def list_records(store: ObjectStore) -> list[str]:
    return [key.removeprefix(f"{DAMAGED_DIR}/") for key in store.list(f"{DAMAGED_DIR}/")]


def delete_record(store: ObjectStore, name: str) -> None:
    store.delete(record_key(name))


@dataclass
class DamagedSet:
    """Every recorded damaged copy, and the records that could not be read."""

    copies: set[DamagedCopy]
    records: list[str]
    unreadable: dict[str, str]  # record name -> why

    def keys(self) -> set[tuple[bytes, str]]:
        """(id, pack) of every damaged copy: what index loading skips."""
        return {(c.id, c.pack) for c in self.copies}

    def ids(self) -> set[bytes]:
        return {c.id for c in self.copies}

    def packs(self) -> set[str]:
        return {c.pack for c in self.copies}


def load_records(store: ObjectStore, envelope: Envelope) -> DamagedSet:
    copies: set[DamagedCopy] = set()
    unreadable: dict[str, str] = {}
    names = list_records(store)
    for name in names:
        try:
            data = store.get(record_key(name))
            copies.update(decode_record(data, envelope, name))
        except ObjectMissingError:
            continue  # dropped by a prune meanwhile
        except IntegrityError as exc:
            unreadable[name] = str(exc)
    return DamagedSet(copies, names, unreadable)


def replace_records(
    store: ObjectStore, keep: Iterable[DamagedCopy], old: Iterable[str], envelope: Envelope
) -> None:
    """Write one record of `keep`, then delete the `old` records (crash safe: a crash
    in between leaves the same copies recorded twice, which is harmless)."""
    new = write_record(store, keep, envelope)
    for name in old:
        if name != new:
            delete_record(store, name)
