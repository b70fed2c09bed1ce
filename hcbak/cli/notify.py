"""`hcbak notify test|smtp`: check that report emails reach their recipients, and set the
SMTP server they go through (notify_smtp.py)."""

from typing import Annotated

import typer

from hcbak.cli import notify_smtp
from hcbak.cli.common import check_value, load_config
from hcbak.cli.output import info
from hcbak.config import validate_email
from hcbak.errors import ConfigError

app = typer.Typer(
    help="Email notifications: the SMTP server, a test message.", no_args_is_help=True
)


@app.command("test")
def test(
    to: Annotated[
        list[str] | None,
        typer.Option("--to", help="Recipient (default: every job's notify addresses)."),
    ] = None,
) -> None:
    """Send a test email through the configured SMTP server (exit 4 when it fails)."""
    from hcbak.engine.notify import send_email

    config = load_config()
    if config.smtp is None:
        raise ConfigError(
            "no smtp server configured", path=str(config.path), hint="add an `smtp:` section"
        )
    recipients = [check_value(validate_email, address, "--to") for address in to or []]
    if not recipients:
        for job in config.jobs.values():
            if job.notify:
                recipients += [r for r in job.notify.to if r not in recipients]
    if not recipients:
        raise ConfigError("no recipients: use --to ADDR or a job's notify.email.to")
    subject = "[hcbak] test message"
    body = (
        "This is a test message from hcbak.\n\n"
        f"Config: {config.path}\nSMTP:   {config.smtp.host}:{config.smtp.port} "
        f"({config.smtp.security})\n\nIf you read this, job reports will reach you.\n"
    )
    send_email(config.smtp, recipients, subject, body)
    info(f"test email sent to {', '.join(recipients)}")


notify_smtp.register(app)
