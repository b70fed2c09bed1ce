"""A TLS front for one simulator node that can lose chosen responses.

It terminates TLS with the node's own certificate (so the node's pin still matches),
forwards each request to the node, and for a matching request closes the client
connection after the node has answered: the cluster acted, the client never heard.
That is the "response lost" case no simulator fault produces by itself.
"""

from __future__ import annotations

import http.client
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class LossyProxy:
    def __init__(self, target: str, cert: Path, key: Path) -> None:
        self.target = target
        self.drop: tuple[str, str] | None = None  # (method, path prefix)
        self.drops_left = 0
        self.dropped: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                host, port = proxy.target.split(":")
                ctx = ssl._create_unverified_context()
                conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=5)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                if proxy.should_drop(self.command, self.path):
                    proxy.dropped.append(f"{self.command} {self.path}")
                    self.close_connection = True
                    return
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def should_drop(self, method: str, path: str) -> bool:
        armed = self.drop is not None and self.drops_left > 0
        if armed and self.drop and method == self.drop[0] and path.startswith(self.drop[1]):
            self.drops_left -= 1
            return True
        return False

    def __enter__(self) -> LossyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
