"""Fixtures that run the real simulator (real HTTPS on 127.0.0.1, dynamic ports)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hcbak.config import ClusterConfig, TLSConfig
from hcbak.hypercore.client import HyperCoreClient
from hcbak.secrets import Secret

from .conftest import make_cluster

try:
    from hcbak.sim import Simulator
except ImportError:  # the simulator's package export may land after its modules
    from hcbak.sim.simulator import Simulator


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Any]:
    with Simulator(tmp_path / "sim", nodes=3, task_delay=0.02) as running:
        yield running


def pinned(sim: Any) -> TLSConfig:
    return TLSConfig(fingerprints=dict(zip(sim.node_addresses, sim.fingerprints, strict=True)))


def sim_cluster(sim: Any, *, user: str = "admin", **kw: Any) -> ClusterConfig:
    name, password = sim.admin if user == "admin" else sim.backup_user
    kw.setdefault("tls", pinned(sim))
    kw.setdefault("worker_vm", "hcbak-worker")
    return make_cluster(list(sim.node_addresses), user=name, password=password, **kw)


def sim_client(sim: Any, **kw: Any) -> HyperCoreClient:
    cfg = sim_cluster(sim, **kw)
    client = HyperCoreClient(cfg, cfg.password.resolve())
    client.login()
    return client


def requests_to(sim: Any, method: str, path_prefix: str) -> list[tuple[int, str, str, Any]]:
    return [r for r in sim.requests if r[1] == method and r[2].startswith(path_prefix)]


def secret_of(cfg: ClusterConfig) -> Secret:
    return cfg.password.resolve()
