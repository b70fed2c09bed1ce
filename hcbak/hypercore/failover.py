"""Sending one HTTP request to "the cluster": node rotation, timeouts, backoff.

A HyperCore cluster has no VIP; every node serves the same API and any node may be
rebooting for an update. During an update a node accepts TCP and never answers, then
fails TLS, then answers 502 with an HTML body while its backend starts (API notes).
`NodePool.send` tries the nodes in turn, starting with the last one that worked, in at
most `rounds` rounds with a bounded exponential backoff between rounds, so the worst
case is known in advance and stated in the error.

Whether a failed request may be repeated on the next node depends on whether it can
have reached the API:
- refused, connect timeout, TLS handshake failure or timeout, 502/503 (the node's front
  end says its API backend is not running): the API never saw it -> any request may
  move on;
- read timeout, connection reset after sending, 500/504 and other 5xx: the API may have
  acted -> idempotent requests move on, mutations raise `MaybeProcessedError` so the
  caller can check the effect (e.g. look for the snapshot label) before repeating.
A 401 triggers one re-login and a resend on the same node (the API rejected the call,
so it did nothing).
"""

from __future__ import annotations

import json as jsonlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from hcbak.errors import APIError, ClusterUnreachableError
from hcbak.hypercore import tls
from hcbak.hypercore.connection import (
    MaybeSent,
    NodeConnection,
    NotSent,
    PinMismatch,
    new_session,
    session_cookie,
    set_session_cookie,
)

if TYPE_CHECKING:
    from requests import Response

    from hcbak.config import TLSConfig

log = logging.getLogger("hcbak.hypercore")

BACKOFF_BASE = 0.5
BACKOFF_CAP = 5.0
REST_PREFIX = "/rest/v1"
# Statuses sent by a node's front end while its API backend is down: nothing was done.
NOT_DELIVERED_STATUSES = frozenset({502, 503})


class MaybeProcessedError(APIError):
    """A mutation's outcome is unknown: it may have reached the API, so it was not
    repeated. Callers that can check the effect (snapshot label, object gone) do so."""

    def __init__(self, message: str, *, address: str, status: int | None = None) -> None:
        super().__init__(message, status=status)
        self.address = address


@dataclass(frozen=True)
class _NodeFailure(Exception):
    """Why one node failed a request, and whether the API may have seen it."""

    reason: str
    delivered: bool  # may the API have seen the request?
    status: int | None = None


def backoff_delay(round_index: int) -> float:
    """Pause before round `round_index` (1-based after the first): 0.5, 1, 2, 4, 5, 5 s."""
    if round_index <= 0:
        return 0.0
    return float(min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(round_index - 1, 16)))


class NodePool:
    """The nodes of one cluster, each with its own TLS trust and kept-alive connections.

    One `requests.Session` serves all nodes: each node's adapter is mounted at its URL,
    and its cookie jar holds the session cookie for every node (connection.py).
    """

    def __init__(
        self,
        cluster_name: str,
        addresses: list[str],
        tls_config: TLSConfig,
        *,
        connect_timeout: float,
        read_timeout: float,
        rounds: int,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not addresses:
            raise ClusterUnreachableError(f"cluster {cluster_name} has no node addresses")
        self.cluster_name = cluster_name
        self.tls_config = tls_config
        self.timeout = (float(connect_timeout), float(read_timeout))
        self.rounds = max(1, int(rounds))
        self._sleep = sleep
        self._clock = clock
        self.addresses: list[str] = []
        self.trust: dict[str, tls.NodeTrust] = {}
        self.connections: dict[str, NodeConnection] = {}
        self._contexts: dict[tuple[str, str | None], Any] = {}
        self.session = new_session()
        self.relogin: Callable[[], None] | None = None
        self._login_lock = threading.Lock()
        self.last_failures: dict[str, str] = {}  # address -> reason, of the last failed send
        self._current = 0
        for address in addresses:
            self._add(address)

    # --- membership -------------------------------------------------------------------
    def _add(self, address: str) -> None:
        trust = tls.trust_for(address, self.tls_config)
        key = (trust.mode, trust.ca_file)
        if key not in self._contexts:
            self._contexts[key] = tls.tls_context(trust.mode, trust.ca_file)
        self.addresses.append(address)
        self.trust[address] = trust
        self.connections[address] = NodeConnection(
            self.session,
            tls.base_url(address),
            self._contexts[key],
            pin=trust.fingerprint if trust.mode == "pin" else None,
            connect_timeout=self.timeout[0],
            read_timeout=self.timeout[1],
        )

    @property
    def session_cookie(self) -> str | None:
        """The API session (`POST /login`'s sessionID), sent to every node; None: none."""
        return session_cookie(self.session)

    @session_cookie.setter
    def session_cookie(self, value: str | None) -> None:
        set_session_cookie(self.session, value)

    def add_discovered(self, lan_ips: list[str]) -> list[str]:
        """Add `GET /Node` lanIPs to the rotation when their host is not known yet.

        Configured `host:port` entries are kept as they are: a discovered bare IP whose
        host is already configured (all simulator nodes are 127.0.0.1 on their own port;
        a real node may be configured with a non-default port) would otherwise add a
        wrong port-less address. A node that would have no trust (pins are in use but
        none exists for it) is not added: it could never be verified.
        """
        known = {tls.split_address(a)[0] for a in self.addresses}
        added = []
        for ip in lan_ips:
            if not ip or ip in known:
                continue
            trust = tls.trust_for(ip, self.tls_config)
            if trust.mode == "system" and getattr(self.tls_config, "fingerprints", None):
                log.debug("not adding discovered node %s: no pinned fingerprint", ip)
                continue
            self._add(ip)
            known.add(ip)
            added.append(ip)
        return added

    def bound_seconds(self, rounds: int | None = None) -> float:
        """Worst-case time of one `send` (all nodes hang in every round)."""
        n = rounds or self.rounds
        per_node = self.timeout[0] + self.timeout[1]
        return n * len(self.addresses) * per_node + sum(backoff_delay(i) for i in range(n))

    def rotation(self) -> list[str]:
        """All nodes, starting with the one that answered last."""
        i = self._current % len(self.addresses)
        return self.addresses[i:] + self.addresses[:i]

    # --- sending ----------------------------------------------------------------------
    def send(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool,
        json: Any = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        rest: bool = True,
        auth: bool = True,
        rounds: int | None = None,
    ) -> Response:
        """Send one request to the first node that answers; see the module docstring.

        Returns any response that is the API's own answer (2xx-4xx, and 5xx other than
        502/503 for mutations is raised as MaybeProcessedError). Raises
        ClusterUnreachableError when no node answered, stating each node's failure and
        the time spent.
        """
        n_rounds = max(1, rounds or self.rounds)
        started = self._clock()
        failures: dict[str, str] = {}
        relogged = False
        for round_index in range(n_rounds):
            if round_index:
                self._sleep(backoff_delay(round_index))
            for address in self.rotation():
                while True:
                    sent_cookie = self.session_cookie
                    try:
                        resp = self._attempt(
                            address, method, path, json, data, headers, params, rest, auth
                        )
                    except _NodeFailure as failure:
                        failures[address] = failure.reason
                        log.debug("%s %s on %s: %s", method, path, address, failure.reason)
                        if failure.delivered and not idempotent:
                            raise MaybeProcessedError(
                                f"{method} {path} on node {address}: {failure.reason}; the "
                                "cluster may have acted on it, so it was not repeated",
                                address=address,
                                status=failure.status,
                            )
                        break
                    if resp.status_code == 401 and auth and self.relogin and not relogged:
                        relogged = True
                        # Parallel VM workers share this pool: only the first thread to
                        # see the expired session logs in; the others resend with it.
                        with self._login_lock:
                            if self.session_cookie == sent_cookie:
                                log.debug("session rejected by %s: logging in again", address)
                                self.relogin()
                        continue
                    self._current = self.addresses.index(address)
                    return resp
        elapsed = self._clock() - started
        self.last_failures = failures
        detail = ", ".join(f"{a} {r}" for a, r in failures.items())
        raise ClusterUnreachableError(
            f"no node of cluster {self.cluster_name} answered {method} {path}: {detail} "
            f"({n_rounds} round(s) over {len(self.addresses)} node(s) in {elapsed:.1f} s; "
            f"limit {self.bound_seconds(n_rounds):.0f} s)",
            hint="check that the nodes are up and reachable over https "
            f"(`hcbak cluster test {self.cluster_name}`)",
        )

    def _attempt(
        self,
        address: str,
        method: str,
        path: str,
        json: Any,
        data: Any,
        headers: Mapping[str, str] | None,
        params: Mapping[str, str] | None,
        rest: bool,
        auth: bool,
    ) -> Response:
        target = (REST_PREFIX if rest else "") + path
        if params:
            target += "?" + urlencode(params)
        all_headers = {}
        body = data
        if json is not None:
            body = jsonlib.dumps(json).encode()
            all_headers["Content-Type"] = "application/json"
        elif body is not None and not isinstance(body, bytes | bytearray):
            all_headers["Content-Length"] = str(len(body))  # a sized stream, never chunked
        all_headers.update(headers or {})
        try:
            resp = self.connections[address].request(method, target, all_headers, body, auth=auth)
        except PinMismatch as exc:
            # Never fail over past a wrong certificate silently: someone must look.
            raise tls.mismatch_error(address, self.trust[address].fingerprint or "", exc.presented)
        except NotSent as exc:
            raise _NodeFailure(exc.reason, delivered=False)
        except MaybeSent as exc:
            raise _NodeFailure(exc.reason, delivered=True)
        code = resp.status_code
        if code in NOT_DELIVERED_STATUSES:
            kind = " (HTML)" if _is_html(resp) else ""
            raise _NodeFailure(f"answered HTTP {code}{kind}", False, code)
        if code >= 500:
            raise _NodeFailure(f"answered HTTP {code}", True, code)
        return resp

    def close(self) -> None:
        self.session.close()


def _is_html(resp: Response) -> bool:
    ctype = resp.headers.get("Content-Type", "")
    return "html" in ctype or resp.text.lstrip()[:1] == "<"
