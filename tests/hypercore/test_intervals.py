"""snapDiff answers parsed into the compact interval array (hypercore/intervals.py)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hcbak.errors import APIError
from hcbak.hypercore.intervals import PairArray, parse_snap_diff

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
