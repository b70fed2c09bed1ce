"""Email reports: rendering, and delivery to a real aiosmtpd server."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime

import pytest

from hcbak.config import SMTPConfig
from hcbak.engine.notify import render_body, render_subject, send_email, should_notify
from hcbak.engine.report import DiskReport, JobReport, VmReport, human_bytes
from hcbak.errors import ConfigError, HcbakError
from hcbak.secrets import Secret, SecretRef

from .smtp_server import smtp_server


def _report() -> JobReport:
    job = JobReport("nightly", "prod", "main", started=datetime(2026, 1, 1, tzinfo=UTC))
    job.finished = datetime(2026, 1, 1, 0, 1, tzinfo=UTC)
    ok = VmReport("web01", "u1", point_id="p-123")
    ok.disks.append(
        DiskReport(
            "d", 0, "VIRTIO_DISK", 1 << 30, bytes_read=5 << 20, bytes_stored=3 << 20, cbt_used=True
        )
    )
    job.vms = [ok, VmReport("db01", "u2", status="failed", reason="snapshot task ERROR")]
    return job


def test_subject_and_body_name_job_status_counts_and_each_vm() -> None:
    job = _report()
    assert render_subject(job) == "[hcbak] nightly: PARTIAL - 1/2 VMs backed up, 3.0 MiB stored"
    body = render_body(job)
    assert "p-123" in body and "snapshot task ERROR" in body and "exit code 3" in body
    assert should_notify(job, ["failure"]) and not should_notify(job, ["success"])


def test_email_arrives_with_the_report_subject_and_login() -> None:
    os.environ["HCBAK_TEST_SMTP_PW"] = "s3cret-smtp"
    with smtp_server(password="s3cret-smtp") as inbox:
        cfg = SMTPConfig(
            host=inbox.host,
            port=inbox.port,
            security="none",
            sender="hcbak@example.com",
            username="mailer",
            password=SecretRef(env="HCBAK_TEST_SMTP_PW"),
        )
        job = _report()
        send_email(cfg, ["ops@example.com"], render_subject(job), render_body(job))
    (msg,) = inbox.messages
    assert msg["Subject"] == render_subject(job)
    assert msg["To"] == "ops@example.com"
    assert inbox.logins == ["mailer"]


def test_refused_login_is_an_error_that_does_not_contain_the_password() -> None:
    with smtp_server(password="right") as inbox:
        cfg = SMTPConfig(
            host=inbox.host,
            port=inbox.port,
            security="none",
            sender="a@b.c",
            username="u",
            password=SecretRef(value=Secret("wrong-canary")),
        )
        with pytest.raises(HcbakError) as info:
            send_email(cfg, ["ops@example.com"], "s", "b")
    assert "wrong-canary" not in str(info.value)
    assert inbox.messages == []


def test_a_password_is_never_sent_in_clear_to_another_host() -> None:
    """security: none with a login is refused before connecting, unless the relay is on
    this host (the aiosmtpd tests above use 127.0.0.1). 192.0.2.1 is TEST-NET: nothing
    answers there, and nothing is tried."""
    cfg = SMTPConfig(host="192.0.2.1", port=25, security="none", sender="a@b.c",
                     username="u", password=SecretRef(value=Secret("clear-canary")))  # fmt: skip
    started = time.monotonic()
    with pytest.raises(ConfigError, match="refusing to send the SMTP password unencrypted"):
        send_email(cfg, ["ops@example.com"], "s", "b")
    assert time.monotonic() - started < 1.0, "it tried to connect first"


def test_unreachable_server_is_a_one_line_error() -> None:
    with smtp_server() as inbox:
        port = inbox.port
    cfg = SMTPConfig(host="127.0.0.1", port=port, security="starttls", sender="a@b.c")
    with pytest.raises(HcbakError, match="failed"):
        send_email(cfg, ["ops@example.com"], "s", "b")


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (41 << 20, "41.0 MiB"), (3 << 40, "3.0 TiB")],
)
def test_sizes_read_the_same_in_mails_summaries_and_repo_show(n: int, text: str) -> None:
    assert human_bytes(n) == text
