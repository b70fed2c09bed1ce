"""HTTPS to one HyperCore node: keep-alive connections, TLS trust, two timeouts.

Built on the standard library's `http.client` and `ssl`. hcbak used `requests` before;
importing it (with urllib3, its cookie jar and charset detection) cost 0.1-0.17 s of
every `hcbak job run` on a 2-core VM, a sixth of an incremental run, while hcbak needs
none of what it adds: no redirects, proxies, cookie jars or content decoding.

What this module decides, because failover (failover.py) depends on it:
- the connect timeout covers the TCP connect and the TLS handshake together; the read
  timeout covers sending the request and every read of the answer;
- a failure before the first request byte is sent raises `NotSent` (the API never saw
  the request), anything later raises `MaybeSent`;
- a pinned certificate is checked right after the handshake, before any byte of the
  request (password, session cookie) is sent; a mismatch raises `PinMismatch`.
"""

from __future__ import annotations

import hashlib
import http.client
import json as jsonlib
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

log = logging.getLogger("hcbak.hypercore")

IDLE_PER_NODE = 8  # kept-alive connections per node; parallel VM workers share them


class _Failure(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotSent(_Failure):
    """The connection failed before the request was sent (refused, connect timeout,
    TLS failure): the API cannot have acted on it."""


class MaybeSent(_Failure):
    """The request may have reached the API (read timeout, connection lost after
    sending, a broken answer)."""


class PinMismatch(Exception):
    """The node presented a certificate other than the pinned one."""

    def __init__(self, presented: str) -> None:
        super().__init__(f"certificate fingerprint {presented}")
        self.presented = presented


class Response:
    """A complete answer: status, headers and the whole (small, JSON) body."""

    def __init__(self, status_code: int, headers: http.client.HTTPMessage, content: bytes):
        self.status_code = status_code
        self.headers = headers
        self.content = content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        """The decoded body; ValueError when it is not JSON."""
        return jsonlib.loads(self.content)

    @property
    def cookies(self) -> dict[str, str]:
        """Name -> value of the Set-Cookie headers (attributes dropped)."""
        found = {}
        for header in self.headers.get_all("Set-Cookie") or []:
            name, sep, value = header.split(";", 1)[0].partition("=")
            if sep:
                found[name.strip()] = value.strip().strip('"')
        return found


def tls_context(mode: str, ca_file: str | None = None) -> ssl.SSLContext:
    """The client context for a trust mode (tls.NodeTrust.mode).

    pin and insecure: no CA validation (clusters ship self-signed certificates); pin
    is checked per connection by the fingerprint. ca: that bundle, with the hostname
    or IP checked. system: the OS store (honours SSL_CERT_FILE/SSL_CERT_DIR).
    """
    if mode in ("pin", "insecure"):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        try:
            ctx = ssl.create_default_context(cafile=ca_file if mode == "ca" else None)
        except (ssl.SSLError, OSError) as exc:  # not PEM, unreadable, gone since added
            from hcbak.errors import TLSError

            reason = getattr(exc, "reason", None) or exc.strerror or type(exc).__name__
            raise TLSError(
                f"cannot use CA file {ca_file}: {reason}",
                hint="it must hold the PEM certificate(s) that signed the nodes' certificates",
            ) from exc
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class _Connection(http.client.HTTPConnection):
    """One socket to the node; `open` makes it, nothing reconnects behind our back."""

    auto_open = 0  # a dropped socket raises instead of silently reconnecting

    def open(
        self, ctx: ssl.SSLContext, pin: str | None, connect_timeout: float, read_timeout: float
    ) -> None:
        deadline = time.monotonic() + connect_timeout
        try:
            raw = socket.create_connection((self.host, self.port), timeout=connect_timeout)
        except ConnectionRefusedError:
            raise NotSent("refused")
        except TimeoutError:
            raise NotSent(f"connect timed out after {connect_timeout:g} s")
        except OSError as exc:
            raise NotSent(f"connect failed ({exc.strerror or exc})")
        try:
            # http.client writes the headers and the body separately: without NODELAY
            # the body waits for the node's delayed ACK, 40 ms on every mutation.
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            raw.settimeout(max(0.001, deadline - time.monotonic()))
            sock = ctx.wrap_socket(raw, server_hostname=self.host)
        except TimeoutError:
            raw.close()
            raise NotSent(f"timed out in the TLS handshake after {connect_timeout:g} s")
        except ssl.SSLCertVerificationError as exc:
            raw.close()
            raise NotSent(f"TLS certificate not trusted ({exc.verify_message or exc.reason})")
        except (ssl.SSLError, OSError) as exc:
            raw.close()
            raise NotSent(f"TLS handshake failed ({_describe(exc)})")
        if pin is not None:
            der = sock.getpeercert(binary_form=True) or b""
            presented = hashlib.sha256(der).hexdigest()
            if presented != pin:
                sock.close()
                raise PinMismatch(presented)
        sock.settimeout(read_timeout)
        self.sock = sock

    def is_stale(self) -> bool:
        """An idle keep-alive socket the node closed (or wrote to) cannot carry a request."""
        if self.sock is None:
            return True
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)


class NodeConnection:
    """Requests to one node, over a small pool of kept-alive connections."""

    def __init__(
        self,
        host: str,
        port: int,
        ctx: ssl.SSLContext,
        *,
        pin: str | None,
        connect_timeout: float,
        read_timeout: float,
    ) -> None:
        self.host = host
        self.port = port
        self.ctx = ctx
        self.pin = pin
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()

    def request(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes | Iterable[bytes] | None = None,
    ) -> Response:
        """Send one request and read the whole answer; NotSent/MaybeSent/PinMismatch."""
        conn = self._take()
        started = time.monotonic()
        try:
            if conn.sock is None:
                conn.open(self.ctx, self.pin, self.connect_timeout, self.read_timeout)
            try:
                conn.request(method, target, body=body, headers=dict(headers))
                answer = conn.getresponse()
                content = answer.read()
            except TimeoutError:
                raise MaybeSent(f"timed out after {self.read_timeout:g} s")
            except (OSError, http.client.HTTPException) as exc:
                raise MaybeSent(f"connection failed ({_describe(exc)})")
        except BaseException:
            conn.close()  # in an unknown state: never reused
            raise
        log.debug(
            "%s %s on %s:%s -> %s (%.0f ms)",
            method,
            target.split("?")[0],
            self.host,
            self.port,
            answer.status,
            (time.monotonic() - started) * 1000,
        )
        if answer.will_close or conn.sock is None:
            conn.close()
        else:
            self._give_back(conn)
        return Response(answer.status, answer.headers, content)

    def _take(self) -> _Connection:
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if not conn.is_stale():
                    return conn
                conn.close()
        return _Connection(self.host, self.port, timeout=self.read_timeout)

    def _give_back(self, conn: _Connection) -> None:
        with self._lock:
            if len(self._idle) < IDLE_PER_NODE:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _describe(exc: BaseException) -> str:
    """A one-line reason without addresses doubled or Python class paths."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).replace("_", " ").lower()
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())[:160]
