"""Helpers for tests against the simulator (its `sim` fixture is in conftest.py)."""

from __future__ import annotations

from typing import Any

from hcbak.cli.sim import pinned_tls
from hcbak.config import TLSConfig
from hcbak.hypercore.client import HyperCoreClient
from hcbak.hypercore.settings import ConnectionSettings
from hcbak.secrets import Secret

from .conftest import make_cluster


def pinned(sim: Any) -> TLSConfig:
    return pinned_tls(sim)


def sim_cluster(sim: Any, *, user: str = "admin", **kw: Any) -> ConnectionSettings:
    name, password = sim.admin if user == "admin" else sim.backup_user
    kw.setdefault("tls", pinned(sim))
    return make_cluster(list(sim.node_addresses), user=name, password=password, **kw)


def sim_client(sim: Any, **kw: Any) -> HyperCoreClient:
    cfg = sim_cluster(sim, **kw)
    client = HyperCoreClient(cfg, cfg.password.resolve())
    client.login()
    return client


def requests_to(sim: Any, method: str, path_prefix: str) -> list[tuple[int, str, str, Any]]:
    return [r for r in sim.requests if r[1] == method and r[2].startswith(path_prefix)]


def secret_of(cfg: ConnectionSettings) -> Secret:
    return cfg.password.resolve()


def idle_connections(pool: Any) -> list[Any]:
    """The kept-alive (urllib3) connections of a `NodePool`, from each node's adapter."""
    idle = []
    for node in pool.connections.values():
        manager = node.adapter.poolmanager
        for key in manager.pools.keys():  # noqa: SIM118 (the container cannot iterate)
            idle += [c for c in manager.pools[key].pool.queue if c is not None and c.sock]
    return idle
