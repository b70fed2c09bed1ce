"""Deterministic VM-like disk images for benchmarks.

Layout at 1 MiB granularity, drawn from a seeded RNG: 40% never written (holes in a sparse
file), 35% compressible (text-like, unique per block so dedup cannot cheat), 25% random
(incompressible). Random bytes come from an AES-CTR keystream: deterministic and fast
enough that generating 4 GiB takes seconds, not minutes.

`changed_copy` makes the "1% changed" image for incremental runs: it keeps the base's hole
map byte-for-byte (so fixed-chunk peers see the same chunk boundaries) and overwrites a
seeded 1% of the written regions. Repeated incrementals chain steps: step k overwrites
another seeded 1% of the same written regions (`apply_changes`), so every run after the
first sees 1% changed since the one before it, and the hole map never moves.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

MiB = 1 << 20
REGION = MiB
HOLE, TEXT, RANDOM = "hole", "text", "random"


@dataclass(frozen=True)
class Mix:
    hole: float = 0.40
    text: float = 0.35
    random: float = 0.25


def region_kinds(size: int, seed: int = 42, mix: Mix = Mix()) -> list[str]:
    """The kind of every 1 MiB region, deterministic for (size, seed)."""
    rng = random.Random(seed)
    kinds = []
    for _ in range(size // REGION):
        x = rng.random()
        kinds.append(HOLE if x < mix.hole else TEXT if x < mix.hole + mix.text else RANDOM)
    return kinds


class _Bytes:
    """Deterministic byte sources: keystream for random data, a text pool for the rest."""

    def __init__(self, seed: int) -> None:
        key = seed.to_bytes(4, "big") * 8
        self._ctr = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
        words = [
            b"backup",
            b"cluster",
            b"snapshot",
            b"node",
            b"disk",
            b"kernel",
            b"the",
            b"log",
            b"INFO",
            b"service",
            b"started",
            b"user",
            b"GET",
            b"/api/v1",
            b"200",
            b"ms",
            b"\n",
            b"2026-11-27T01:00:00Z",
        ]
        rng = random.Random(seed)
        pool = bytearray()
        while len(pool) < 4 * MiB:
            pool += rng.choice(words) + b" "
            if rng.random() < 0.02:
                pool += self.random(rng.randrange(8, 64))
        self._pool = bytes(pool)

    def random(self, n: int) -> bytes:
        return self._ctr.update(bytes(n))

    def text(self, index: int, n: int) -> bytes:
        start = (index * 7919) % (len(self._pool) - n)
        head = index.to_bytes(8, "big") * 2
        return head + self._pool[start + len(head) : start + n]


def write_image(path: Path, size: int, seed: int = 42) -> dict[str, int]:
    """Write a sparse image of `size` bytes; returns bytes per kind."""
    src = _Bytes(seed)
    counts = {HOLE: 0, TEXT: 0, RANDOM: 0}
    with open(path, "wb") as fh:
        fh.truncate(size)
        for i, kind in enumerate(region_kinds(size, seed)):
            counts[kind] += REGION
            if kind == HOLE:
                continue
            data = src.random(REGION) if kind == RANDOM else src.text(i, REGION)
            os.pwrite(fh.fileno(), data, i * REGION)
    return counts


def changed_regions(size: int, seed: int = 42, fraction: float = 0.01, step: int = 0) -> list[int]:
    """Indexes of the written regions change step `step` overwrites (seeded; step 0 is
    the 'changed' image of a single incremental)."""
    written = [i for i, k in enumerate(region_kinds(size, seed)) if k != HOLE]
    rng = random.Random(seed + 1 + 7919 * step)
    count = max(1, int(len(written) * fraction / (1 - Mix().hole)))
    return sorted(rng.sample(written, min(count, len(written))))


def changed_writes(size: int, seed: int = 42, step: int = 0) -> Iterator[tuple[int, bytes]]:
    """(offset, data) guest writes of change step `step` (step 0: base -> changed)."""
    src = _Bytes(seed + 1000 + 7919 * step)
    for i in changed_regions(size, seed, step=step):
        yield i * REGION, src.random(REGION)


def apply_changes(path: Path, size: int, seed: int = 42, step: int = 0) -> None:
    """Apply change step `step` to an image file in place."""
    with open(path, "r+b") as out:
        for offset, data in changed_writes(size, seed, step):
            os.pwrite(out.fileno(), data, offset)


def changed_copy(base: Path, dest: Path, size: int, seed: int = 42) -> None:
    """Copy `base` keeping its hole map exactly, then apply change step 0."""
    kinds = region_kinds(size, seed)
    with open(base, "rb") as src, open(dest, "wb") as out:
        out.truncate(size)
        for i, kind in enumerate(kinds):
            if kind != HOLE:
                os.pwrite(out.fileno(), os.pread(src.fileno(), REGION, i * REGION), i * REGION)
    apply_changes(dest, size, seed)
