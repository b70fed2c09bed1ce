"""A TCP proxy in front of the test gateway that can misbehave on demand.

Real sockets, real HTTP from boto3: the proxy forwards bytes to the Ceph RGW unless
told to answer the next connections with a 503, reset them, or hang them (accept and
never answer), or to go down (drop every open connection and reset new ones). This is
how the tests make a real S3 endpoint throttle, drop connections and vanish mid-run.
"""

from __future__ import annotations

import socket
import struct
import threading
from typing import Any
from urllib.parse import urlsplit

_BODY = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
SLOW_DOWN = (
    b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: close\r\n"
    + f"Content-Length: {len(_BODY)}\r\n\r\n".encode()
    + _BODY
)


class FaultProxy:
    def __init__(self, upstream_url: str) -> None:
        parts = urlsplit(upstream_url)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.fail_next = 0  # answer this many new connections with 503 SlowDown
        self.reset_next = 0  # reset this many new connections after their request head
        self.lose_answer_next = 0  # forward the request, then reset instead of answering
        self.reject: tuple[str, ...] = ()  # answer requests whose line has all: 503
        self.hang = False  # accept, read, never answer
        self.down = False  # reset every new connection; `go_down` drops the open ones
        self.failed = 0
        self.reset = 0
        self.lost = 0
        self.forwarded = 0
        self.requests: list[str] = []  # request lines seen ("PUT /bucket/key?...")
        # hold: the first request whose line contains these waits (held is set) until
        # release is set, with its connection open: an upload caught in the middle
        self.hold: tuple[str, ...] = ()  # every one of these strings in the line
        self.held = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def go_down(self) -> None:
        """The endpoint vanishes: open connections are cut, new ones reset."""
        with self._lock:
            self.down = True
            for sock in self._open:
                _reset(sock)
            self._open.clear()

    def close(self) -> None:
        self._closed = True
        self.go_down()
        self.listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with self._lock:
            if self.down:
                _reset(client)
                return
            action = "forward"
            if self.hang:
                action = "hang"
            elif self.fail_next > 0:
                self.fail_next -= 1
                self.failed += 1
                action = "fail"
            elif self.lose_answer_next > 0:
                self.lose_answer_next -= 1
                self.lost += 1
                action = "lose"
            elif self.reset_next > 0:
                self.reset_next -= 1
                self.reset += 1
                action = "reset"
            else:
                self.forwarded += 1
            self._open.append(client)
        if action == "hang":
            try:
                while client.recv(65536):
                    pass
            except OSError:
                pass
            return
        if action in ("fail", "reset"):
            try:
                client.recv(65536)  # the request head (and maybe some body)
                if action == "fail":
                    client.sendall(SLOW_DOWN)
                    client.shutdown(socket.SHUT_WR)
                    client.close()
                else:
                    _reset(client)
            except OSError:
                pass
            return
        try:
            upstream = socket.create_connection(self.upstream)
        except OSError:
            _reset(client)
            return
        with self._lock:
            self._open.append(upstream)
        if action == "lose":  # the server does the request; its answer never arrives
            threading.Thread(target=_pipe, args=(client, upstream), daemon=True).start()
            try:  # pass on "100 Continue" (so the body is sent), drop the real answer
                while (answer := upstream.recv(65536)).startswith(b"HTTP/1.1 100"):
                    client.sendall(answer)
            except OSError:
                pass
            _reset(client)
            upstream.close()
            return
        threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()
        _pipe(client, upstream, self._watch)

    def requests_matching(self, text: str) -> list[str]:
        with self._lock:
            return [line for line in self.requests if text in line]

    def _watch(self, chunk: bytes, src: socket.socket) -> bool:
        """Log request lines; hold the first that matches `hold` until `release`;
        answer those matching `reject` with 503 SlowDown. False: do not forward."""
        head = chunk[:300].split(b"\r\n", 1)[0]
        if not head.endswith(b" HTTP/1.1"):
            return True
        line = head.decode("latin-1")
        with self._lock:
            self.requests.append(line)
            if self.reject and all(t in line for t in self.reject):
                self.failed += 1
                try:
                    src.sendall(SLOW_DOWN)
                except OSError:
                    pass
                return False
            catch = bool(self.hold) and all(t in line for t in self.hold)
            catch = catch and not self.held.is_set()
            if catch:
                self.held.set()
        if catch:
            self.release.wait(120)
        return True


def _pipe(src: socket.socket, dst: socket.socket, watch: Any = None) -> None:
    try:
        while data := src.recv(65536):
            if watch is not None and not watch(data, src):
                break
            dst.sendall(data)
    except OSError:
        pass
    for sock in (src, dst):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0): the peer sees 'connection reset by peer'."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:  # wakes a thread blocked in recv on it (close alone would wait for that)
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def closed_port() -> int:
    """A loopback port nothing listens on (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
