"""Every network call in hcbak/hypercore passes a timeout (AST inspection).

A call without a timeout can hang a 2 a.m. backup forever on a node that accepts TCP
and never answers, so this is enforced on the source, not left to review.
"""

from __future__ import annotations

import ast
from pathlib import Path

import hcbak.hypercore

PKG = Path(hcbak.hypercore.__file__).parent
HTTP_METHODS = {"request", "get", "post", "put", "patch", "delete", "head", "options", "send"}
NETWORK_RECEIVERS = {"requests", "session", "self.session", "self._session", "sess"}


def _receiver(node: ast.expr) -> str:
    return ast.unparse(node)


def network_calls(tree: ast.AST) -> list[ast.Call]:
    calls = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        receiver = _receiver(node.func.value)
        if node.func.attr in HTTP_METHODS and receiver in NETWORK_RECEIVERS:
            calls.append(node)
        if node.func.attr == "create_connection" and receiver == "socket":
            calls.append(node)
    return calls


def connection_constructions(tree: ast.AST) -> list[ast.Call]:
    """`HTTPConnection(...)` and subclasses built in hcbak (http.client's default: none)."""
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and ast.unparse(node.func).split(".")[-1].endswith(("Connection", "_Connection"))
        and ast.unparse(node.func) != "NodeConnection"
    ]


def timeouts_cleared(tree: ast.AST) -> list[ast.Call]:
    """`x.settimeout(None)`: a socket that waits forever."""
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "settimeout"
        and (
            not node.args or (isinstance(node.args[0], ast.Constant) and node.args[0].value is None)
        )
    ]


def has_timeout(call: ast.Call) -> bool:
    return any(k.arg == "timeout" for k in call.keywords)


def test_every_requests_and_socket_call_in_hypercore_has_a_timeout() -> None:
    offenders = []
    seen = 0
    for path in sorted(PKG.glob("*.py")):
        for call in network_calls(ast.parse(path.read_text())):
            seen += 1
            if not has_timeout(call):
                offenders.append(f"{path.name}:{call.lineno}: {ast.unparse(call)[:80]}")
    assert seen >= 2, "the inspection found no network calls: it no longer looks right"
    assert offenders == []


def test_the_inspection_catches_a_call_without_timeout() -> None:
    bad = ast.parse("import requests\nrequests.get('https://x')\nself.session.request('GET', u)\n")
    calls = network_calls(bad)
    assert len(calls) == 2 and not any(has_timeout(c) for c in calls)


def test_every_http_connection_is_built_with_a_timeout_and_none_is_cleared() -> None:
    built = 0
    offenders = []
    for path in sorted(PKG.glob("*.py")):
        tree = ast.parse(path.read_text())
        for call in connection_constructions(tree):
            built += 1
            if not has_timeout(call):
                offenders.append(f"{path.name}:{call.lineno}: {ast.unparse(call)[:80]}")
        offenders += [f"{path.name}:{c.lineno}: settimeout(None)" for c in timeouts_cleared(tree)]
    # Since hcbak speaks through requests it builds no HTTP connection itself: urllib3
    # builds them with the timeout of each call (checked above). Any built here needs one.
    assert built == 0 or offenders == []
    assert offenders == []


def test_the_inspection_catches_connections_without_timeouts() -> None:
    bad = ast.parse("c = _Connection(h, p)\nhttp.client.HTTPSConnection(h)\ns.settimeout(None)\n")
    assert len(connection_constructions(bad)) == 2
    assert not any(has_timeout(c) for c in connection_constructions(bad))
    assert len(timeouts_cleared(bad)) == 1
