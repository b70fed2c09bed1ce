"""Helpers for the HyperCore client tests: cluster configs and dead/hanging nodes.

Dead and hanging nodes are real sockets on 127.0.0.1 (port 0): a refused port is one
that was bound and closed; a hanging node is a listening socket that never answers.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hcbak.config import TLSConfig
from hcbak.hypercore.settings import ConnectionSettings
from hcbak.secrets import Secret, SecretRef

try:
    from hcbak.sim import Simulator
except ImportError:  # the simulator's package export may land after its modules
    from hcbak.sim.simulator import Simulator

CANARY = "canary-Pw-7f3a9c"


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Any]:
    """A running 3-node simulator (real HTTPS on 127.0.0.1, dynamic ports)."""
    with Simulator(tmp_path / "sim", nodes=3, task_delay=0.02) as running:
        yield running


def make_cluster(
    nodes: list[str],
    *,
    user: str = "admin",
    password: str = CANARY,
    tls: TLSConfig | None = None,
    **kw: Any,
) -> ConnectionSettings:
    kw.setdefault("connect_timeout", 1.0)
    kw.setdefault("read_timeout", 1.0)
    kw.setdefault("task_timeout", 10.0)
    kw.setdefault("retries", 2)
    return ConnectionSettings(
        name="lab",
        nodes=nodes,
        username=user,
        password=SecretRef(value=Secret(password)),
        tls=tls or TLSConfig(insecure=True),
        **kw,
    )


def refused_address() -> str:
    """An address where nothing listens (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def hanging_address() -> Iterator[str]:
    """A node that accepts TCP (kernel backlog) and never says a word."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    try:
        yield f"127.0.0.1:{s.getsockname()[1]}"
    finally:
        s.close()
