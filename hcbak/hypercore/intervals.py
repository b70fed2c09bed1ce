"""A snapDiff answer held compactly: 16 bytes per changed interval.

A disk with scattered writes can answer snapDiff with a million intervals. Parsed the
plain way (a dict per interval from the JSON, then a tuple per interval) that costs
~300 bytes each, ~285 MiB at 1 M intervals (benchmarks/sparse.py, issue 21). Here
each object of the answer becomes two integers in one array as the JSON parser meets
it, so no dict outlives its own parse; the caller still sees a sequence of
`(lower, upper)` pairs.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, overload

from hcbak.errors import APIError


class PairArray(Sequence[tuple[int, int]]):
    """Pairs of integers (snapDiff's byte intervals, the engine's block ranges) in one
    flat array of signed 64-bit integers: 16 bytes a pair, where a list of tuples
    costs ~130."""

    __slots__ = ("_flat",)

    def __init__(self, pairs: Iterable[tuple[int, int]] = ()) -> None:
        self._flat = array("q")
        for lower, upper in pairs:
            self.append(lower, upper)

    def append(self, lower: int, upper: int) -> None:
        self._flat.append(lower)
        self._flat.append(upper)

    def set_last_end(self, upper: int) -> None:
        """Widen the last pair (merging a range into the one before it)."""
        self._flat[-1] = upper

    def __len__(self) -> int:
        return len(self._flat) // 2

    @overload
    def __getitem__(self, i: int) -> tuple[int, int]: ...

    @overload
    def __getitem__(self, i: slice) -> list[tuple[int, int]]: ...

    def __getitem__(self, i: int | slice) -> tuple[int, int] | list[tuple[int, int]]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self._flat[2 * i], self._flat[2 * i + 1]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        # two strided copies (8 bytes a pair, gone after the walk) let zip build the
        # pairs in C: a Python generator here made a 1 M-interval plan 3x slower
        return zip(self._flat[0::2], self._flat[1::2], strict=True)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence):
            return NotImplemented
        if len(self) != len(other):
            return False
        return all(a == tuple(b) for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PairArray({list(self)[:4]!r}{'...' if len(self) > 4 else ''})"


def parse_snap_diff(body: bytes | str, what: str) -> PairArray:
    """The intervals of a snapDiff answer: a list of `{"lower", "upper"}` objects (or
    an object with `intervals`, or one interval object). APIError when the shape is
    not that, or a bound is not an integer."""
    out = PairArray()

    def interval(pairs: list[tuple[str, Any]]) -> Any:
        obj = dict(pairs)
        if "lower" in obj and "upper" in obj:
            try:
                out.append(int(obj["lower"]), int(obj["upper"]))
            except (TypeError, ValueError, OverflowError):
                raise APIError(f"{what}: interval bounds are not integers: {obj!r}") from None
            return _TAKEN
        return obj

    try:
        data = json.loads(body, object_pairs_hook=interval)
    except ValueError as exc:
        raise APIError(f"{what} answered a body that is not JSON ({exc})") from None
    if isinstance(data, dict):
        data = data.get("intervals", [data])
    if data is _TAKEN:  # one interval object on its own
        return out
    if not isinstance(data, list):
        raise APIError(f"{what} answered {type(data).__name__}, not a list")
    for item in data:
        if item is not _TAKEN:
            raise APIError(f"{what}: interval without lower/upper: {item!r}")
    return out


_TAKEN = object()  # stands in the parsed list for an interval already in the array
