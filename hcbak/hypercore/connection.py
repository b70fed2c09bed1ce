"""HTTPS to the nodes of one cluster, through `requests` (urllib3 underneath).

The library does the HTTP: keep-alive pools, TLS, the pin check, stale-socket
detection, streamed bodies. This module only adds what HyperCore failover needs, and
failover.py builds on it:
- one `requests.Session` per node pool, with one adapter per node mounted at the
  node's URL: each node has its own trust (pin), and nothing else is reachable;
- the connect timeout covers the TCP connect and the TLS handshake together; the read
  timeout covers sending the request and every read of the answer;
- a failure before the first request byte is sent raises `NotSent` (the API never saw
  the request), anything later raises `MaybeSent`;
- a pinned certificate is checked by urllib3 (`assert_fingerprint`) right after the
  handshake, before any byte of the request (password, session cookie) is sent; a
  mismatch raises `PinMismatch`;
- the library never retries, never follows a redirect and never reads proxies or CA
  bundles from the environment: what is repeated, and where, is failover.py's call.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Iterable, Mapping
from http.cookiejar import DefaultCookiePolicy
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPSConnection
from urllib3.connectionpool import HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    InsecureRequestWarning,
    NewConnectionError,
)
from urllib3.exceptions import TimeoutError as LibraryTimeout

from hcbak.hypercore.tls import tls_context as tls_context  # the trust modes' contexts

log = logging.getLogger("hcbak.hypercore")

IDLE_PER_NODE = 8  # kept-alive connections per node; parallel VM workers share them
SESSION_COOKIE = "sessionID"

# `insecure: true` is warned about once per run by the client, not once per request.
warnings.filterwarnings("ignore", category=InsecureRequestWarning)
# urllib3 would log "pool is full, discarding connection" when more VM workers than
# IDLE_PER_NODE share a node (the extra sockets are simply closed, as intended), and
# full URLs with --debug, where hcbak logs each request itself.
logging.getLogger("urllib3").setLevel(logging.ERROR)


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


# --- the session ----------------------------------------------------------------------
class _ExplicitCookiesOnly(DefaultCookiePolicy):
    """The jar holds only the session cookie hcbak sets after login.

    Cookies the nodes set are not stored: they would be scoped to one host (every node
    is another host) and could shadow the session hcbak sends to all of them.
    """

    def set_ok(self, cookie: Any, request: Any) -> bool:
        return False


def new_session() -> requests.Session:
    """A session with no adapter mounted yet (NodeConnection mounts one per node)."""
    session = requests.Session()
    session.trust_env = False  # no proxies, no REQUESTS_CA_BUNDLE: nodes are reached directly
    session.adapters.clear()  # a URL that is no configured node is refused, not fetched
    session.cookies.set_policy(_ExplicitCookiesOnly())
    session.headers["Accept"] = "application/json"
    return session


def set_session_cookie(session: requests.Session, value: str | None) -> None:
    """Send `sessionID=value` to every node from now on (None: to none)."""
    if value is None:
        session.cookies.clear()
    else:
        # No domain: the cookie goes to every host, i.e. every node of the cluster.
        session.cookies.set(SESSION_COOKIE, value)


def session_cookie(session: requests.Session) -> str | None:
    value = session.cookies.get(SESSION_COOKIE)
    return str(value) if value is not None else None


# --- one node -------------------------------------------------------------------------
# What the connection layer tells NodeConnection.request about the attempt running in
# this thread: urllib3 sends synchronously in the caller's thread, and nothing else
# knows whether the failure came before or after the first request byte.
_attempt = threading.local()


class _NodeHTTPSConnection(HTTPSConnection):
    """urllib3's connection with two timing rules of hcbak's, and the sent mark."""

    def _new_conn(self) -> socket.socket:
        started = time.monotonic()
        sock = super()._new_conn()
        if isinstance(self.timeout, int | float):
            # The TLS handshake gets what is left of the connect timeout, not a new one.
            sock.settimeout(max(0.001, self.timeout - (time.monotonic() - started)))
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        _attempt.sent = True  # from here on the node may receive bytes of the request
        send_timeout = getattr(_attempt, "send_timeout", None)
        if send_timeout is not None:
            # urllib3 sends under the connect timeout on a new connection; an upload
            # the node reads slowly gets the read timeout, as every read does.
            self.timeout = send_timeout
        super().request(*args, **kwargs)


class _NodeHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _NodeHTTPSConnection


class _NodeAdapter(HTTPAdapter):
    """One node's connections: its TLS context and pin, IDLE_PER_NODE kept alive, no
    retries (failover.py decides what may be repeated)."""

    def __init__(self, ctx: ssl.SSLContext, pin: str | None) -> None:
        self._ctx = ctx
        self._pin = pin
        super().__init__(pool_connections=1, pool_maxsize=IDLE_PER_NODE, max_retries=0)

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        super().init_poolmanager(
            connections,
            maxsize,
            block,
            ssl_context=self._ctx,
            # urllib3 sets the context's verify mode from this: keep the mode's own
            cert_reqs=self._ctx.verify_mode,
            assert_fingerprint=self._pin,
            **pool_kwargs,
        )
        self.poolmanager.pool_classes_by_scheme = {"https": _NodeHTTPSPool}

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: Any, cert: Any = None
    ) -> Any:  # (host params, pool kwargs); the stubs' TypedDicts exist only in stubs
        host_params, _ = super().build_connection_pool_key_attributes(request, verify, cert)
        return host_params, {}  # trust is the node's context and pin, never `verify`

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        """Nothing: requests would load certifi's CAs into the node's context."""


class NodeConnection:
    """Requests to one node over the pool's session (its own adapter and trust)."""

    def __init__(
        self,
        session: requests.Session,
        base_url: str,
        ctx: ssl.SSLContext,
        *,
        pin: str | None,
        connect_timeout: float,
        read_timeout: float,
    ) -> None:
        self.session = session
        self.base_url = base_url
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.adapter = _NodeAdapter(ctx, pin)
        session.mount(base_url + "/", self.adapter)

    def request(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes | Iterable[bytes] | None = None,
        *,
        auth: bool = True,
    ) -> requests.Response:
        """Send one request and read the whole answer; NotSent/MaybeSent/PinMismatch.

        `auth`: send the session cookie (login and the update status go without)."""
        request = requests.Request(method, self.base_url + target, dict(headers), data=body)
        prepared = self.session.prepare_request(request)
        if not auth:
            prepared.headers.pop("Cookie", None)
        started = time.monotonic()
        _attempt.sent = False
        _attempt.send_timeout = self.read_timeout
        try:
            answer = self.session.send(
                prepared,
                timeout=(self.connect_timeout, self.read_timeout),
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise self._failure(exc, sent=bool(_attempt.sent)) from exc
        finally:
            _attempt.send_timeout = None
        log.debug(
            "%s %s on %s -> %s (%.0f ms)",
            method,
            target.split("?")[0],
            self.base_url,
            answer.status_code,
            (time.monotonic() - started) * 1000,
        )
        return answer

    def _failure(self, exc: requests.RequestException, *, sent: bool) -> Exception:
        """The library's exception as hcbak's NotSent/MaybeSent/PinMismatch."""
        chain = _causes(exc)
        for cause in chain:
            presented = _FINGERPRINT_GOT.search(str(cause))
            if presented and "Fingerprints did not match" in str(cause):
                return PinMismatch(presented.group(1).lower())
        timed_out = any(isinstance(c, TimeoutError | LibraryTimeout) for c in chain)
        if sent:
            if timed_out:
                return MaybeSent(f"timed out after {self.read_timeout:g} s")
            return MaybeSent(f"connection failed ({_describe(chain)})")
        if any(isinstance(c, ConnectionRefusedError) for c in chain):
            return NotSent("refused")
        if any(isinstance(c, NewConnectionError) for c in chain):
            return NotSent(f"connect failed ({_describe(chain)})")
        if any(isinstance(c, ConnectTimeoutError) for c in chain):
            return NotSent(f"connect timed out after {self.connect_timeout:g} s")
        if timed_out:
            return NotSent(f"timed out in the TLS handshake after {self.connect_timeout:g} s")
        verify = next((c for c in chain if isinstance(c, ssl.SSLCertVerificationError)), None)
        if verify is not None:
            detail = verify.verify_message or verify.reason
            return NotSent(f"TLS certificate not trusted ({detail})")
        return NotSent(f"TLS handshake failed ({_describe(chain)})")


_FINGERPRINT_GOT = re.compile(r'got "(?:b\')?([0-9a-fA-F]{40,64})')


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception and everything it wraps, outermost first (requests -> urllib3 ->
    OSError/ssl)."""
    chain: list[BaseException] = []
    todo: list[object] = [exc]
    while todo:
        item = todo.pop(0)
        if not isinstance(item, BaseException) or any(item is seen for seen in chain):
            continue
        chain.append(item)
        todo += [getattr(item, "reason", None), item.__cause__, item.__context__, *item.args]
    return chain


def _describe(chain: list[BaseException]) -> str:
    """A one-line reason from the innermost cause that has one, without addresses
    doubled or Python class paths."""
    for exc in reversed(chain):
        if isinstance(exc, ssl.SSLError) and exc.reason:
            return str(exc.reason).replace("_", " ").lower()
        if isinstance(exc, OSError) and exc.strerror:
            return exc.strerror
    innermost = chain[-1]
    return " ".join((str(innermost) or type(innermost).__name__).split())[:160]
