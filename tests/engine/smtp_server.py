"""A real SMTP server (aiosmtpd) on a free 127.0.0.1 port that collects messages."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


@dataclass
class Inbox:
    host: str
    port: int
    messages: list[Message] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.original_content))
        return "250 OK"


def _free_port() -> int:
    # aiosmtpd's Controller cannot start on port 0 (it connects to its own port to
    # check it is up), so take a free one from the kernel and release it.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def smtp_server(*, password: str | None = None) -> Iterator[Inbox]:
    inbox = Inbox("127.0.0.1", _free_port())

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth: Any) -> Any:
        ok = isinstance(auth, LoginPassword) and auth.password.decode() == password
        if ok:
            inbox.logins.append(auth.login.decode())
        return AuthResult(success=ok, handled=False)

    kwargs: dict[str, Any] = {}
    if password is not None:
        kwargs = {"authenticator": authenticate, "auth_require_tls": False}
    controller = Controller(inbox, hostname=inbox.host, port=inbox.port, **kwargs)
    controller.start()
    try:
        yield inbox
    finally:
        controller.stop()
