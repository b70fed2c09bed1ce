"""HTTPS front of the simulator: one stdlib ThreadingHTTPServer per node.

Why the standard library (docs/simulator.md): no dependency to vet, and we need
control below the HTTP layer that frameworks hide - accept a TCP connection and then
never answer (hang), break the TLS handshake, present another certificate, drop an
upload midway. The TLS handshake therefore runs in the per-connection thread (not in
`accept`), so a hanging or slow client never blocks the listener.
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from hcbak.sim import api
from hcbak.sim.records import RestError

if TYPE_CHECKING:
    from hcbak.sim.simulator import Simulator

log = logging.getLogger("hcbak.sim")

IDLE_TIMEOUT = 30.0  # keep-alive connections idle longer than this are closed
DRAIN_LIMIT = 64 << 20  # bodies we read and discard to answer an error politely
CHUNK = 1 << 20
HTML_502 = (
    b"<html><head><title>502 Bad Gateway</title></head><body><center>"
    b"<h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>"
)
HTML_404 = (
    b"<html><head><title>404 Not Found</title></head><body><center>"
    b"<h1>404 Not Found</h1></center><hr><center>nginx</center></body></html>"
)


class Node:
    """One cluster node: a port, a certificate, a fault mode, its open connections."""

    def __init__(
        self, index: int, sim: Simulator, cert: Path, key: Path, rogue: tuple[Path, Path]
    ) -> None:
        self.index = index
        self.sim = sim
        self.port = 0
        self.mode = "ok"
        self.ctx = _server_context(cert, key)
        self._rogue = rogue
        self._rogue_ctx: ssl.SSLContext | None = None
        self._server: NodeServer | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._release = threading.Event()

    # --- listening ------------------------------------------------------------------
    def start(self, port: int = 0) -> None:
        if self._server is not None:
            return
        self._server = NodeServer(("127.0.0.1", port or self.port), self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"sim-node-{self.index}",
            daemon=True,
        )
        self._thread.start()

    def stop_listening(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()  # closed listening socket: connection refused

    def set_mode(self, mode: str) -> None:
        self.mode = mode
        if mode == "down":
            self.stop_listening()
        elif self._server is None:
            self.start()
        if mode == "hang":
            self._release = threading.Event()
        else:
            self._release.set()
        if mode in ("down", "tls_error", "tls_cert"):
            self.drop_connections()  # keep-alive connections must not bypass the fault

    def close(self) -> None:
        self._release.set()
        self.stop_listening()
        self.drop_connections()

    # --- connections ------------------------------------------------------------------
    def track(self, sock: socket.socket) -> None:
        with self._lock:
            self._conns.add(sock)

    def untrack(self, sock: socket.socket) -> None:
        with self._lock:
            self._conns.discard(sock)

    def drop_connections(self) -> None:
        with self._lock:
            conns = list(self._conns)
        for sock in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    @property
    def rogue_ctx(self) -> ssl.SSLContext:
        """Context with a different self-signed certificate (the "cert" TLS fault)."""
        if self._rogue_ctx is None:
            self._rogue_ctx = _server_context(*self._rogue)
        return self._rogue_ctx

    def hang(self) -> None:
        """Hold the connection open, answering nothing, until the fault is lifted."""
        self._release.wait()


def _server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


class NodeServer(ThreadingHTTPServer):
    """Accepts TCP; each connection thread applies the node's fault, then TLS, then HTTP."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], node: Node) -> None:
        self.node = node
        super().__init__(address, SimHandler)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        node = self.node
        sock: socket.socket = request
        node.track(sock)
        try:
            mode = node.mode
            if mode == "hang":
                node.hang()
                return
            if mode == "tls_error":
                return  # closing before the ServerHello: the client's handshake fails
            ctx = node.rogue_ctx if mode == "tls_cert" else node.ctx
            # Headers and body go out in separate writes: without NODELAY, Nagle plus
            # the client's delayed ACK add ~40 ms to every answer.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(10)
            try:
                tls = ctx.wrap_socket(sock, server_side=True)
            except (OSError, ssl.SSLError):
                return
            node.untrack(sock)
            sock = tls
            node.track(sock)
            sock.settimeout(IDLE_TIMEOUT)
            self.finish_request(sock, client_address)
        except Exception:
            log.debug("connection on node %d ended with an error", node.index, exc_info=True)
        finally:
            node.untrack(sock)
            try:
                sock.close()
            except OSError:
                pass


class SimHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive handler; every method goes through `_serve`."""

    protocol_version = "HTTP/1.1"
    server: NodeServer
    server_version = "nginx"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("node %d: " + format, self.server.node.index, *args)

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    # --- dispatch -----------------------------------------------------------------------
    def _serve(self) -> None:
        node = self.server.node
        url = urlsplit(self.path)
        path, query = url.path, dict(parse_qsl(url.query))
        mode = node.mode
        if mode == "hang":
            node.hang()
            self.close_connection = True
            return
        if mode in ("down", "tls_error", "tls_cert"):
            self.close_connection = True
            return
        try:
            if path.startswith("/sim/"):
                self._control(path)
            elif mode == "502":
                self._drain()
                self._send(502, HTML_502, "text/html")
            elif path == "/update/update_status.json":
                self._update_status()
            elif path.startswith("/rest/v1/"):
                self._rest(path[len("/rest/v1") :], query, url)
            elif path.startswith("/rest/v2/") and self.server.node.sim.model.serves_v2():
                self._rest(path[len("/rest/v2") :], query, url, version=2)
            elif path.startswith("/rest/v2/"):
                # A cluster before 9.7.1: no v2 API. Logged, so a test sees the attempt.
                self.server.node.sim.log_request(node.index, self.command, path, None)
                self._drain()
                self._send(404, HTML_404, "text/html")
            else:
                self._drain()
                self._send(404, HTML_404, "text/html")
        except (ConnectionError, TimeoutError, ssl.SSLError):
            self.close_connection = True
        except Exception:
            log.exception("simulator bug on %s %s", self.command, self.path)
            self.close_connection = True
            try:
                self._json(500, {"error": "internal simulator error"})
            except OSError:
                pass

    def _rest(self, sub: str, query: dict[str, str], url: Any, version: int = 1) -> None:
        sim = self.server.node.sim
        model = sim.model
        is_upload = self.command == "PUT" and sub.rstrip("/") == "/VirtualDisk/upload"
        body: Any = None
        if not is_upload:
            try:
                body = self._read_json()
            except ValueError as exc:
                self._json(400, {"error": str(exc)})
                return
        full = url.path + (f"?{url.query}" if url.query else "")
        sim.log_request(self.server.node.index, self.command, full, body)
        if sim.faults.should_fail(self.command, url.path):
            if is_upload:
                self._drain()
            self._json(500, {"error": "Internal Server Error"})
            return
        if sub == "/ping":
            self._json(200, {"status": "Active"})
            return
        if sub == "/login" and self.command == "POST":
            self._login(body)
            return
        user, session = self._authenticate()
        if user is None:
            if is_upload:
                self._drain()
            self._json(401, {"error": "Unauthorized: login required or session expired"})
            return
        if sub == "/logout" and self.command == "POST":
            model.logout(session)
            self._json(200, {})
            return
        if is_upload:
            self._upload(user, session, query)
            return
        model.advance()
        req = api.Request(self.command, sub, query, body, user=user, session=session, api=version)
        resp = api.dispatch(model, req)
        delay = sim.faults.answer_delay(self.command, url.path)
        if delay:
            time.sleep(delay)  # done already: only the answer is late
        self._json(resp.status, resp.body, resp.headers)

    # --- auth -------------------------------------------------------------------------
    def _login(self, body: Any) -> None:
        model = self.server.node.sim.model
        if not isinstance(body, dict):
            self._json(400, {"error": "Expected username and password"})
            return
        user, password = str(body.get("username", "")), str(body.get("password", ""))
        if not model.check_password(user, password):
            self._json(401, {"error": "Invalid username or password"})
            return
        sid = model.login(user)
        cookie = f"sessionID={sid}; Path=/; Secure; HttpOnly"
        self._json(200, {"sessionID": sid}, {"Set-Cookie": cookie})

    def _authenticate(self) -> tuple[str | None, str]:
        """HTTP Basic on the call, else the sessionID cookie (None = 401)."""
        model = self.server.node.sim.model
        auth = self.headers.get("Authorization", "")
        if auth.lower().startswith("basic "):
            try:
                user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return None, ""
            return (user if model.check_password(user, password) else None), ""
        sid = _cookie(self.headers.get("Cookie", ""), "sessionID")
        if sid:
            return model.session_user(sid), sid
        return None, ""

    # --- bodies -----------------------------------------------------------------------
    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline()

    def _read_json(self) -> Any:
        raw = self._read_body()
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"Invalid JSON body: {exc.msg}")

    def _drain(self) -> None:
        """Consume a body we will not use so the client reads our answer, if small."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._read_chunked()
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > DRAIN_LIMIT:
            self.close_connection = True
            return
        while length > 0:
            got = self.rfile.read(min(CHUNK, length))
            if not got:
                break
            length -= len(got)

    # --- upload -----------------------------------------------------------------------
    def _upload(self, user: str, session: str, query: dict[str, str]) -> None:
        sim = self.server.node.sim
        model = sim.model
        roles = model.roles_of(user)
        if "Admin" not in roles and api.UPLOAD_ROLE not in roles:
            self._drain()
            self._json(403, {"error": f"User {user} lacks the {api.UPLOAD_ROLE} role"})
            return
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            # Quirk: the cluster needs the size up front; chunked uploads are refused.
            self._drain()
            self._json(400, {"error": "Content-Length is required (chunked upload refused)"})
            return
        length_hdr = self.headers.get("Content-Length")
        filename, filesize = query.get("filename", ""), query.get("filesize", "")
        if length_hdr is None:
            self.close_connection = True
            self._json(400, {"error": "Content-Length is required"})
            return
        length = int(length_hdr)
        if not filename or not filesize.isdigit() or int(filesize) != length:
            self._drain()
            self._json(400, {"error": "filename and filesize (= Content-Length) are required"})
            return
        try:
            with model.lock:
                vd_uuid, dest = model.ops.begin_upload(filename)
        except RestError as exc:
            self._drain()
            self._json(exc.status, {"error": exc.message})
            return
        if not self._receive(dest, length):
            # Forget the half upload first, then drop the connection (client sees a reset).
            model.ops.abort_upload(vd_uuid)
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        tag = model.ops.finish_upload(vd_uuid, session)
        self._json(200, {"taskTag": tag, "createdUUID": vd_uuid})

    def _receive(self, dest: Path, length: int) -> bool:
        """Stream the body to a sparse file; False if the upload was dropped."""
        faults = self.server.node.sim.faults
        fail_after = faults.upload_fail_after
        received = 0
        with open(dest, "wb") as f:
            f.truncate(length)
            while received < length:
                want = min(CHUNK, length - received)
                if fail_after is not None:
                    want = max(1, min(want, fail_after - received))
                    if received >= fail_after:
                        faults.upload_fail_after = None  # one-shot
                        return False
                data = self.rfile.read(want)
                if not data:
                    return False
                if data.count(0) != len(data):
                    f.seek(received)
                    f.write(data)
                received += len(data)
        return True

    # --- update status and control ------------------------------------------------------
    def _update_status(self) -> None:
        phase = self.server.node.sim.faults.update_phase
        if phase is None:
            self._send(404, HTML_404, "text/html")
            return
        self._json(200, update_status_document(phase))

    def _control(self, path: str) -> None:
        sim = self.server.node.sim
        token = self.headers.get("X-Sim-Admin-Token")
        try:
            body = self._read_json()
        except ValueError as exc:
            self._json(400, {"error": str(exc)})
            return
        if not token:
            self._json(401, {"error": "X-Sim-Admin-Token header required"})
            return
        if not sim.check_admin_token(token):
            self._json(403, {"error": "wrong admin token"})
            return
        try:
            result = sim.control(self.command, path, body)
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            self._json(400, {"error": f"{type(exc).__name__}: {exc}"})
            return
        self._json(200, result)

    # --- writing ------------------------------------------------------------------------
    def _json(self, status: int, value: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, api.json_bytes(value), "application/json", headers)

    def _send(
        self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


def update_status_document(phase: str) -> dict[str, Any]:
    """update_status.json for a phase. Idle only when both states are COMPLETE.

    A phase ending in "-plain" (e.g. "complete-plain") sends `prepareStatus` as a bare
    string: the vendor's hypercore_version.py says it "is sometimes str, sometimes dict".
    """
    plain = phase.endswith("-plain")
    phase = phase.removesuffix("-plain")
    prepare, master = {
        "preparing": ("RUNNING", "IDLE"),
        "running": ("COMPLETE", "RUNNING"),
        "complete": ("COMPLETE", "COMPLETE"),
        "error": ("COMPLETE", "ERROR"),
    }.get(phase, ("COMPLETE", "COMPLETE"))
    doc: dict[str, Any] = {
        "prepareStatus": {"state": prepare, "percent": 100 if prepare == "COMPLETE" else 40},
        "updateStatus": {
            "masterState": master,
            "fromBuild": "9.4.30.217736",
            "toBuild": "9.4.31.218001",
            "status": {"usernameMessage": "", "percent": 100 if master == "COMPLETE" else 50},
        },
    }
    if phase == "malformed":
        del doc["updateStatus"]["masterState"]
    if plain:
        doc["prepareStatus"] = prepare
    return doc


def _cookie(header: str, name: str) -> str:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return ""
