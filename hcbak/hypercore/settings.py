"""What the REST client needs to reach, trust and log in to one cluster.

The client's own record, not the config's cluster entry: the YAML model also holds
the worker VM and the device folder, which are the engine's business. The engine and
the CLI build it from a `ClusterConfig` (hcbak.engine.connect.connection_settings).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hcbak.config import TLSConfig
from hcbak.secrets import SecretRef


@dataclass
class ConnectionSettings:
    """One cluster's nodes, login, certificate trust, timeouts (seconds) and retry rounds."""

    name: str
    nodes: list[str]
    username: str
    password: SecretRef
    tls: TLSConfig = field(default_factory=TLSConfig)
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    task_timeout: float = 900.0
    update_wait: float = 1800.0
    retries: int = 3
