"""HTTPS client helper for simulator contract tests (real requests over TLS).

Sessions set `trust_env = False`: otherwise REQUESTS_CA_BUNDLE from the environment
silently overrides `session.verify` and the pinned node certificate is ignored.
"""

from __future__ import annotations

import time
from typing import Any

import requests

from hcbak.sim import Simulator


class Api:
    """A thin HTTPS client for one node: verify against the node's own certificate."""

    def __init__(self, sim: Simulator, node: int = 0, auth: tuple[str, str] | None = None):
        self.sim = sim
        self.base = sim.node_urls[node] + "/rest/v1"
        self.s = requests.Session()
        self.s.trust_env = False
        self.s.verify = str(sim.cert_paths[node])
        self.s.auth = auth if auth is not None else sim.admin

    def call(self, method: str, path: str, **kw: Any) -> requests.Response:
        kw.setdefault("timeout", 10)
        return self.s.request(method, self.base + path, **kw)

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.call("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> requests.Response:
        return self.call("POST", path, json=body, **kw)

    def delete(self, path: str, **kw: Any) -> requests.Response:
        return self.call("DELETE", path, **kw)

    def wait(self, resp: requests.Response, timeout: float = 10) -> dict[str, Any]:
        """Poll the task of a mutation answer until terminal; returns the task record."""
        assert resp.status_code == 200, resp.text
        tag = resp.json()["taskTag"]
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            records = self.get(f"/TaskTag/{tag}").json()
            if records and records[0]["state"] in ("COMPLETE", "ERROR", "UNINITIALIZED"):
                return dict(records[0])
            time.sleep(0.005)
        raise AssertionError(f"task {tag} did not finish")

    def mutate(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        """Mutation that must succeed: returns the answer, after its task COMPLETEd."""
        resp = self.call(method, path, json=body)
        task = self.wait(resp)
        assert task["state"] == "COMPLETE", task
        return dict(resp.json())
