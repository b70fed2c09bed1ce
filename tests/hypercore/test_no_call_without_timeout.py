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
