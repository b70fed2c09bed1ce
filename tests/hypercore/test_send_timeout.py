"""Sending a request is bounded by the read timeout, not the connect timeout.

urllib3 alone sends the first request of a new connection under the connect timeout;
an upload to a node that reads slowly (a restore's image) would then fail after a few
seconds. The node here completes the TLS handshake and never reads a byte.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hcbak.config import TLSConfig
from hcbak.hypercore.client import SizedStream
from hcbak.hypercore.failover import MaybeProcessedError, NodePool
from hcbak.sim.certs import ensure_cert

CONNECT_TIMEOUT = 0.2
READ_TIMEOUT = 1.0


@pytest.fixture
def deaf_node(tmp_path: Path) -> Iterator[str]:
    """Accepts TLS, then reads nothing: the client's socket buffers fill and send blocks."""
    cert, key = tmp_path / "node.pem", tmp_path / "node.key"
    ensure_cert(cert, key, "deaf-node")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                raw, _ = listener.accept()
                held.append(ctx.wrap_socket(raw, server_side=True))
            except OSError:
                return

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
        for sock in held:
            sock.close()


def test_an_upload_the_node_does_not_read_fails_after_the_read_timeout(deaf_node: str) -> None:
    pool = NodePool(
        "lab",
        [deaf_node],
        TLSConfig(insecure=True),
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        rounds=1,
    )
    size = 256 << 20  # far more than the socket buffers hold
    chunks = (bytes(1 << 20) for _ in range(size >> 20))
    started = time.monotonic()
    with pytest.raises(MaybeProcessedError, match="timed out"):
        pool.send("PUT", "/VirtualDisk/upload", data=SizedStream(chunks, size), idempotent=False)
    elapsed = time.monotonic() - started
    pool.close()
    assert READ_TIMEOUT - 0.1 < elapsed < READ_TIMEOUT + 2.0, elapsed
