"""A pinned certificate is checked before any request byte leaves hcbak.

The node here is a bare TLS server that completes every handshake and records each
byte it receives afterwards: with a wrong pin it must receive nothing (no password, no
session cookie, no request line); with the right pin it receives the request, which
shows the recorder would have seen one.
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
from hcbak.errors import TLSError
from hcbak.hypercore.failover import NodePool
from hcbak.sim.certs import ensure_cert, fingerprint

from .conftest import CANARY

ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
    b"Connection: close\r\n\r\n{}"
)


class RecordingNode:
    """Accepts TLS connections on 127.0.0.1 and records what arrives after each handshake."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.handshakes = 0
        self.received: list[bytes] = []  # per finished connection, after its handshake
        self._lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._record, args=(raw,), daemon=True).start()

    def _record(self, raw: socket.socket) -> None:
        raw.settimeout(5)
        data = b""
        try:
            with self.ctx.wrap_socket(raw, server_side=True) as tls:
                with self._lock:
                    self.handshakes += 1
                while b"\r\n\r\n" not in data or not data.endswith(b"}"):
                    chunk = tls.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                if data:
                    tls.sendall(ANSWER)
        except (OSError, ssl.SSLError):
            pass
        with self._lock:
            self.received.append(data)

    def finished(self, connections: int, timeout: float = 5.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.received) >= connections:
                    return list(self.received)
            time.sleep(0.01)
        raise AssertionError(f"the node saw {len(self.received)} connection(s) end")

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[RecordingNode, str]]:
    cert, key = tmp_path / "node.pem", tmp_path / "node.key"
    ensure_cert(cert, key, "recording-node")
    server = RecordingNode(cert, key)
    try:
        yield server, fingerprint(cert)
    finally:
        server.close()


def _login(address: str, pin: str) -> NodePool:
    pool = NodePool(
        "lab",
        [address],
        TLSConfig(fingerprints={address: pin}),
        connect_timeout=2.0,
        read_timeout=2.0,
        rounds=1,
    )
    pool.session_cookie = "cookie-" + CANARY
    try:
        pool.send("POST", "/login", json={"password": CANARY}, idempotent=True)
    finally:
        pool.close()
    return pool


def test_a_pin_mismatch_sends_no_request_byte(node: tuple[RecordingNode, str]) -> None:
    server, presented = node
    wrong = "0" * 64
    with pytest.raises(TLSError) as info:
        _login(server.address, wrong)
    assert wrong in str(info.value) and presented in str(info.value)
    assert server.finished(1) == [b""], "bytes of the request reached a node with a bad pin"
    assert server.handshakes == 1  # the connection got as far as the certificate


def test_with_the_right_pin_the_same_node_receives_the_request(
    node: tuple[RecordingNode, str],
) -> None:
    server, presented = node
    _login(server.address, presented)
    [received] = server.finished(1)
    assert received.startswith(b"POST /rest/v1/login HTTP/1.1\r\n")
    assert CANARY.encode() in received  # body and cookie: the recorder sees everything
