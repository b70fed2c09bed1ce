"""Failover over real sockets: refused and hanging nodes, bounded total time."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hcbak.errors import ClusterUnreachableError, ExitCode
from hcbak.hypercore.client import HyperCoreClient
from hcbak.hypercore.failover import BACKOFF_CAP, backoff_delay
from hcbak.secrets import Secret

from .conftest import CANARY, make_cluster, refused_address


@given(st.integers(min_value=0, max_value=10_000))
def test_backoff_is_bounded_and_never_negative(round_index: int) -> None:
    assert 0 <= backoff_delay(round_index) <= BACKOFF_CAP


def test_all_nodes_down_fails_fast_naming_each_node_and_the_time() -> None:
    nodes = [refused_address() for _ in range(3)]
    client = HyperCoreClient(make_cluster(nodes, retries=2), Secret(CANARY))
    started = time.monotonic()
    with pytest.raises(ClusterUnreachableError) as info:
        client.login()
    elapsed = time.monotonic() - started
    message = str(info.value)
    assert all(f"{n} refused" in message for n in nodes), message
    assert "2 round(s) over 3 node(s)" in message and "limit" in message
    assert info.value.exit_code == ExitCode.FAILED
    # two rounds of instant refusals plus one 0.5 s backoff
    assert elapsed < 0.5 + 1.5
    assert CANARY not in message and CANARY not in repr(info.value)


def test_hanging_node_costs_one_timeout_then_it_is_reported(hanging_address: str) -> None:
    down = refused_address()
    cfg = make_cluster([hanging_address, down], retries=1, connect_timeout=0.4, read_timeout=0.4)
    client = HyperCoreClient(cfg, Secret(CANARY))
    started = time.monotonic()
    with pytest.raises(ClusterUnreachableError) as info:
        client.cluster_info()
    elapsed = time.monotonic() - started
    assert f"{hanging_address} timed out" in str(info.value)
    assert f"{down} refused" in str(info.value)
    assert elapsed < client.pool.bound_seconds() + 0.5
