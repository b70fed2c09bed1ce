"""How hcbak trusts a HyperCore node's certificate.

Clusters ship a self-signed certificate per node, so there are three explicit choices
(per node, from `TLSConfig`):
- *pin*: the SHA-256 of the node certificate's DER bytes, checked on each connection
  right after the handshake and before any request byte is sent (urllib3's
  `assert_fingerprint`, set up in connection.py), so a mismatch never leaks the
  session cookie or password.
- *ca*: a CA bundle file (which may simply be the node's own PEM).
- *insecure*: no verification; callers warn about it on every run.
Without any of these, the system CA store is used.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
from dataclasses import dataclass

from hcbak.config import TLSConfig, normalize_fingerprint
from hcbak.errors import ClusterUnreachableError, TLSError


def split_address(address: str, default_port: int = 443) -> tuple[str, int]:
    """`host`, `host:port` or `[v6]:port` -> (host, port)."""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if address.count(":") == 1:
        host, port = address.split(":")
        return host, int(port)
    return address, default_port


def base_url(address: str) -> str:
    """`https://host:port` for a node address (https implied)."""
    host, port = split_address(address)
    shown = f"[{host}]" if ":" in host else host
    return f"https://{shown}:{port}"


def fetch_fingerprint(address: str, timeout: float = 5.0) -> str:
    """SHA-256 of the certificate a node presents, for trust-on-first-use.

    The handshake is deliberately unverified: the point is to show the user what the
    node presents so they can compare and trust it.
    """
    host, port = split_address(address)
    ctx = tls_context("insecure")
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            ctx.wrap_socket(raw, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except ssl.SSLError as exc:
        raise TLSError(f"TLS handshake with {address} failed: {exc.reason or exc}")
    except TimeoutError:
        raise ClusterUnreachableError(f"{address} did not answer within {timeout:g} s")
    except OSError as exc:
        raise ClusterUnreachableError(f"{address} is unreachable: {exc.strerror or exc}")
    if not der:
        raise TLSError(f"{address} presented no certificate")
    return hashlib.sha256(der).hexdigest()


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
            reason = getattr(exc, "reason", None) or exc.strerror or type(exc).__name__
            raise TLSError(
                f"cannot use CA file {ca_file}: {reason}",
                hint="it must hold the PEM certificate(s) that signed the nodes' certificates",
            ) from exc
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


@dataclass(frozen=True)
class NodeTrust:
    """The trust decision for one node: mode is "pin", "ca", "insecure" or "system"."""

    mode: str
    fingerprint: str | None = None
    ca_file: str | None = None

    def describe(self) -> str:
        if self.mode == "pin":
            return f"pinned sha256 {self.fingerprint}"
        if self.mode == "ca":
            return f"verified with CA file {self.ca_file}"
        if self.mode == "insecure":
            return "NOT verified (insecure)"
        return "verified with system CAs"


def trust_for(address: str, tls: TLSConfig) -> NodeTrust:
    """Resolve the trust of one node address from a `TLSConfig`.

    Fingerprints are looked up by the exact configured address, then by host alone
    (so `10.0.0.1` pins `10.0.0.1:443` too).
    """
    pins = dict(tls.fingerprints or {})
    host, _ = split_address(address)
    pin = pins.get(address) or pins.get(host)
    if pin:
        return NodeTrust("pin", fingerprint=normalize_fingerprint(pin))
    if tls.ca_file:
        return NodeTrust("ca", ca_file=str(tls.ca_file))
    if tls.insecure:
        return NodeTrust("insecure")
    return NodeTrust("system")


def mismatch_error(address: str, expected: str, presented: str) -> TLSError:
    """A TLSError naming the node and both fingerprints (the pinned and the presented)."""
    return TLSError(
        f"certificate of node {address} does not match the pinned fingerprint: "
        f"expected {expected}, node presented {presented}",
        hint="if the node certificate was replaced on purpose, update the fingerprint with "
        "`hcbak cluster add ... --fingerprint` or --trust-on-first-use",
    )
