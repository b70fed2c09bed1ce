"""HyperCore REST client: the only code in hcbak that speaks to a cluster's API.

Nouns used throughout:
- *node*: one HyperCore node address (`host` or `host:port`, https implied). There is
  no cluster VIP, so the client rotates over all nodes and fails over between them.
- *session*: a `sessionID` cookie from `POST /login`, valid on every node.
- *client*: `HyperCoreClient` (client.py), one object assembled from its parts: the
  session and request plumbing (session.py), snapshots (snapshots.py), virtual disks
  (virtual_disks.py); every answer is read by replies.py.
- *task*: the `taskTag` a mutation returns; `HyperCoreClient.wait_task` waits for it,
  and `tasks.poll_until` is the one poll for everything else that takes time.
- *records* (records.py): typed dataclasses built from API dicts in one place; nothing
  outside this package sees a raw API dict except through `VM.raw`.
- *pin*: a node's certificate SHA-256 fingerprint that the config trusts (tls.py).
- *connection settings* (settings.py): what the client needs of a cluster (nodes,
  login, trust, timeouts); built from the config's cluster entry by the engine/CLI.

See docs/hypercore.md for failover, retry, timeout and TLS behaviour.
"""

from hcbak.hypercore.client import HyperCoreClient, hypercore_session
from hcbak.hypercore.records import (
    VM,
    ClusterInfo,
    DeviceSnapshot,
    Disk,
    NetDev,
    Node,
    Snapshot,
    Task,
    UpdateStatus,
    VirtualDisk,
)
from hcbak.hypercore.settings import ConnectionSettings

__all__ = [
    "VM",
    "ClusterInfo",
    "ConnectionSettings",
    "DeviceSnapshot",
    "Disk",
    "HyperCoreClient",
    "NetDev",
    "Node",
    "Snapshot",
    "Task",
    "UpdateStatus",
    "VirtualDisk",
    "hypercore_session",
]
