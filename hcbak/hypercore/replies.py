"""Reading a HyperCore answer: status first, then the JSON body, then created uuids.

Kept apart from the calls so every call reads an answer the same way: a 401/403 is an
AuthError naming the user, any other status >= 400 an APIError with the status, and a
body that is not JSON says so instead of raising a parser error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hcbak.errors import APIError, AuthError

if TYPE_CHECKING:
    from requests import Response


def created_uuid(result: dict[str, Any], what: str) -> str:
    """The `createdUUID` of a mutation's answer; an answer without one is an APIError."""
    uuid = result.get("createdUUID")
    if not uuid:
        raise APIError(f"{what} answered without createdUUID")
    return str(uuid)


def check_status(resp: Response, what: str, username: str) -> None:
    """Raise for a status >= 400 (HTML error pages are not quoted)."""
    code = resp.status_code
    if code < 400:
        return
    text = (
        " ".join(resp.text.split())[:200]
        if "html" not in resp.headers.get("Content-Type", "")
        else "(HTML page)"
    )
    if code == 401:
        raise AuthError(f"{what}: the cluster rejected the session of user {username!r}")
    if code == 403:
        raise AuthError(
            f"{what}: user {username!r} lacks the role for this call (HTTP 403)",
            hint="see `hcbak cluster test` for the roles backup and restore need",
        )
    raise APIError(f"{what} failed: HTTP {code} {text}".rstrip(), status=code)


def json_body(resp: Response, what: str) -> Any:
    """The parsed body (None: empty); a body that is not JSON is an APIError."""
    if not resp.content:
        return None
    try:
        return resp.json()
    except ValueError:
        raise APIError(
            f"{what} answered HTTP {resp.status_code} with a body that is not JSON",
            status=resp.status_code,
        )
