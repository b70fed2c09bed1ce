"""`hcbak notify smtp`: set the mail server job reports go through (the `smtp:` section).

Until it existed, the one config section without a command was written by hand; `hcbak
init` prints every step as a command a script can replay, this one included.
"""

from typing import Annotated

import typer

from hcbak.cli.common import (
    check_value,
    load_config_for_edit,
    save_config,
    secret_ref_from_options,
)
from hcbak.cli.output import info
from hcbak.config import SMTP_SECURITY, SMTPConfig, validate_email
from hcbak.errors import UsageError

# The port each security mode is usually served on (RFC 8314 for ssl, RFC 6409 for
# submission with STARTTLS; plain 25 is a relay on this host).
DEFAULT_PORTS = {"starttls": 587, "ssl": 465, "none": 25}


def register(app: typer.Typer) -> None:
    """Add the `smtp` command to the `notify` group."""
    app.command("smtp")(smtp)


def smtp(
    host: Annotated[str, typer.Option("--host", help="SMTP server name or address.")],
    sender: Annotated[str, typer.Option("--sender", help="From: address of the reports.")],
    port: Annotated[
        int | None,
        typer.Option(
            "--port", min=1, max=65535, help="Port (default: 587 starttls, 465 ssl, 25 none)."
        ),
    ] = None,
    security: Annotated[
        str, typer.Option("--security", help="starttls, ssl or none (a relay on this host).")
    ] = "starttls",
    username: Annotated[
        str | None, typer.Option("--username", help="Log in as this user (optional).")
    ] = None,
    password_env: Annotated[
        str | None, typer.Option(help="Read the SMTP password from this environment variable.")
    ] = None,
    password_file: Annotated[
        str | None, typer.Option(help="Read the SMTP password from this file.")
    ] = None,
    password_command: Annotated[
        str | None, typer.Option(help="Run this shell command; its stdout is the password.")
    ] = None,
) -> None:
    """Set the SMTP server that job reports and `notify test` use (replaces the old one).

    The password is a reference (env var, file or command), never an option value.
    """
    if security not in SMTP_SECURITY:
        raise UsageError(f"--security must be one of {', '.join(SMTP_SECURITY)}")
    check_value(validate_email, sender, "--sender")
    if not host.strip():
        raise UsageError("--host: give the SMTP server's name or address")
    password = secret_ref_from_options(
        "password", env=password_env, file=password_file, command=password_command, prompt=False
    )
    if password is not None and not username:
        raise UsageError("a password option needs --username")
    config = load_config_for_edit()
    config.smtp = SMTPConfig(
        host=host.strip(),
        sender=sender,
        port=port if port is not None else DEFAULT_PORTS[security],
        security=security,
        username=username or None,
        password=password,
    )
    save_config(config)
    info(f"smtp server {host}:{config.smtp.port} ({security}) set")
