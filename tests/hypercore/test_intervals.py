"""snapDiff answers parsed into the compact interval array (hypercore/intervals.py)."""

from __future__ import annotations

import gc
import json
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hcbak.errors import APIError
from hcbak.hypercore.intervals import PairArray, parse_snap_diff

from .simfix import sim_client

pairs = st.lists(st.tuples(st.integers(0, 1 << 50), st.integers(0, 1 << 50)), max_size=50)


@given(pairs)
def test_every_interval_of_a_list_answer_comes_back_in_order(intervals: list) -> None:
    body = json.dumps([{"lower": a, "upper": b} for a, b in intervals]).encode()
    parsed = parse_snap_diff(body, "snapDiff")
    assert parsed == intervals and list(parsed) == intervals and len(parsed) == len(intervals)
    if intervals:
        assert parsed[-1] == intervals[-1] and parsed[1:3] == intervals[1:3]


def test_an_object_answer_with_intervals_or_one_interval_is_read_too() -> None:
    wrapped = json.dumps({"intervals": [{"lower": 1, "upper": 2, "extra": "x"}]})
    assert parse_snap_diff(wrapped, "w") == [(1, 2)]
    assert parse_snap_diff('{"lower": 5, "upper": 9}', "one") == [(5, 9)]
    assert parse_snap_diff("[]", "none") == PairArray()


@pytest.mark.parametrize(
    "body",
    ['[{"lower": 1}]', "[1, 2]", '"text"', "not json", "", '[{"lower": "x", "upper": 2}]'],
)
def test_an_answer_of_another_shape_is_an_api_error(body: str) -> None:
    with pytest.raises(APIError):
        parse_snap_diff(body, "POST snapDiff")


def _deep_size(obj: object) -> int:
    """Bytes of an object and of everything it holds (not types, shared once)."""
    seen, todo, total = set(), [obj], 0
    while todo:
        o = todo.pop()
        if id(o) in seen or isinstance(o, type):
            continue
        seen.add(id(o))
        total += sys.getsizeof(o)
        todo.extend(gc.get_referents(o))
    return total


def test_a_long_snap_diff_answer_is_held_in_16_bytes_an_interval(sim: Any) -> None:
    """100 000 changed intervals from the simulator over HTTPS: what the client keeps
    is the array (16 bytes each), not a tuple per interval (~130 bytes each), which
    at 1 M intervals made hundreds of MiB (benchmarks/sparse.py)."""
    vm = sim.create_vm("big", [1 << 40])
    disk = sim.disk_uuids(vm)[0]
    hc = sim_client(sim, read_timeout=30.0)
    base = hc.create_snapshot(vm, "base")
    serial = base.serial_for(disk) or 0
    n, stride = 100_000, (1 << 40) // 100_000
    log = [[i * stride, i * stride + 4096] for i in range(n)]
    with sim.model.lock:  # the write log a guest writing every 11 MiB would leave
        sim.model.s["writelog"][disk] = {str(serial): log}
    try:
        intervals = hc.snap_diff(disk, serial, 0)
    finally:
        hc.logout()
    assert len(intervals) == n and intervals[7] == (7 * stride, 7 * stride + 4096)
    held = _deep_size(intervals)
    assert held / n < 24, f"{held / n:.0f} bytes per interval"
