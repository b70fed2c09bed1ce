"""Block maps: the list of block ids of one disk image, 16 bytes per block."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

ID_LEN = 16
# The block-map entry of an all-zero block; such blocks are never stored.
ZERO_BLOCK = bytes(ID_LEN)


class BlockMap:
    """Compact map block index -> block id (a bytearray; 16 MiB per TiB at 1 MiB blocks).

    A fresh map is all ZERO_BLOCK, i.e. a sparse, all-zero disk.
    """

    __slots__ = ("_data",)

    def __init__(self, n_blocks: int) -> None:
        self._data = bytearray(n_blocks * ID_LEN)

    def __len__(self) -> int:
        return len(self._data) // ID_LEN

    def get(self, i: int) -> bytes:
        if not 0 <= i < len(self):
            raise IndexError(i)
        return bytes(self._data[i * ID_LEN : (i + 1) * ID_LEN])

    def set(self, i: int, block_id: bytes) -> None:
        if not 0 <= i < len(self):
            raise IndexError(i)
        if len(block_id) != ID_LEN:
            raise ValueError("block ids are 16 bytes")
        self._data[i * ID_LEN : (i + 1) * ID_LEN] = block_id

    def to_bytes(self) -> bytes:
        return bytes(self._data)

    @classmethod
    def from_bytes(cls, data: bytes) -> BlockMap:
        if len(data) % ID_LEN:
            raise ValueError("block map length is not a multiple of 16")
        bm = cls(0)
        bm._data = bytearray(data)
        return bm

    def copy(self) -> BlockMap:
        return BlockMap.from_bytes(bytes(self._data))

    def resize(self, n_blocks: int) -> None:
        """Grow (zero blocks) or shrink, e.g. when a disk's capacity changed."""
        want = n_blocks * ID_LEN
        if want < len(self._data):
            del self._data[want:]
        else:
            self._data.extend(bytes(want - len(self._data)))

    def ids(self) -> Iterator[bytes]:
        """Every non-zero block id, in disk order (duplicates included)."""
        mv = memoryview(self._data)
        for i in range(len(self)):
            chunk = mv[i * ID_LEN : (i + 1) * ID_LEN]
            if chunk != ZERO_BLOCK:
                yield bytes(chunk)

    def positions_of(self, wanted: Iterable[bytes]) -> list[int]:
        """Sorted indices of the blocks whose id is in `wanted` (a few ids: a search
        per id runs in C, so a large map costs no Python loop)."""
        found = set()
        for block_id in wanted:
            if len(block_id) != ID_LEN or block_id == ZERO_BLOCK:
                continue
            at = self._data.find(block_id)
            while at >= 0:
                if at % ID_LEN == 0:
                    found.add(at // ID_LEN)
                    at = self._data.find(block_id, at + ID_LEN)
                else:  # a match across two ids: go on from the next byte
                    at = self._data.find(block_id, at + 1)
        return sorted(found)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BlockMap) and other._data == self._data

    def __hash__(self) -> int:
        return hash(bytes(self._data))
