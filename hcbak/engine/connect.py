"""The edge between the config's cluster entry and the REST client's connection settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hcbak.hypercore.settings import ConnectionSettings

if TYPE_CHECKING:
    from hcbak.config import ClusterConfig


def connection_settings(cluster: ClusterConfig) -> ConnectionSettings:
    """The part of a cluster entry the HyperCore client uses (not the worker VM or
    the device folder, which the engine uses itself)."""
    return ConnectionSettings(
        name=cluster.name,
        nodes=list(cluster.nodes),
        username=cluster.username,
        password=cluster.password,
        tls=cluster.tls,
        connect_timeout=cluster.connect_timeout,
        read_timeout=cluster.read_timeout,
        task_timeout=cluster.task_timeout,
        update_wait=cluster.update_wait,
        retries=cluster.retries,
    )
