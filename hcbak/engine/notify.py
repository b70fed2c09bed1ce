"""Email reports of a job run, through the configured SMTP server (smtplib).

Rendering is pure (subject and plain-text body from a JobReport) so it is tested
without a server; sending supports STARTTLS, implicit TLS (SMTPS) and plain SMTP. A
failed send is reported to the caller, which logs it: the run's exit code does not
change because the mail server was down.
"""

from __future__ import annotations

import ipaddress
import smtplib
import ssl
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import TYPE_CHECKING

from hcbak.engine.report import (
    VM_FAILED,
    VM_OK,
    JobReport,
    human_bytes,
    job_to_dict,
    status_word,
    summary_line,
    vm_status_word,
    vms_failures_first,
)
from hcbak.errors import ConfigError, HcbakError

if TYPE_CHECKING:
    from hcbak.config import SMTPConfig

SEND_TIMEOUT = 30.0


def event_for(job: JobReport) -> str:
    """Which `on:` event a job outcome is: success, warning or failure."""
    word = status_word(job.exit_code())
    return {"success": "success", "warning": "warning"}.get(word, "failure")


def should_notify(job: JobReport, on: Sequence[str]) -> bool:
    return event_for(job) in {o.lower() for o in on}


def render_subject(job: JobReport) -> str:
    totals = job.totals()
    n = len(job.vms)
    word = status_word(job.exit_code()).upper()
    return (
        f"[hcbak] {job.job}: {word} - {totals['vms_ok']}/{n} VMs backed up, "
        f"{human_bytes(totals['bytes_stored'])} stored"
    )


def render_body(job: JobReport) -> str:
    """The mail: a summary first (counts, bytes, duration), then what needs a look
    (failed VMs, warnings), then one line per VM with the failures first, so a
    200-VM job's mail reads from the top (issue 21)."""
    d = job_to_dict(job)
    t = d["totals"]
    lines = [
        f"Summary:  {summary_line(job)}",
        f"Job:      {job.job}",
        f"Status:   {d['status']} (exit code {d['exit_code']})",
        f"Cluster:  {job.cluster}",
        f"Repo:     {job.repo}",
        f"Started:  {d['started']}",
        f"Duration: {d['duration']:.1f} s",
        f"Read:     {human_bytes(t['bytes_read'])}, changed {human_bytes(t['bytes_changed'])}, "
        f"new {human_bytes(t['bytes_new'])}, stored {human_bytes(t['bytes_stored'])}",
    ]
    if job.reason:
        lines.append(f"Reason:   {job.reason}")
    failed = [vm for vm in job.vms if vm.status == VM_FAILED]
    if failed:
        lines += ["", f"Failed ({len(failed)}):"] + [f"  - {vm.name}: {vm.reason}" for vm in failed]
    warnings = list(job.warnings) + [f"{vm.name}: {w}" for vm in job.vms for w in vm.warnings]
    if warnings:
        lines += ["", f"Warnings ({len(warnings)}):"] + [f"  - {w}" for w in warnings]
    if job.copies:  # copy_to: one line per target, one per point not copied
        lines += ["", "Copies:"] + [f"  - {c.summary()}" for c in job.copies]
        lines += [
            f"    point {p.id} ({p.vm_name}): {p.reason}"
            for c in job.copies
            for p in c.of("failed")
        ]
    lines += [
        "",
        f"{'VM':<24} {'STATUS':<8} {'CBT':<5} {'READ':>11} {'STORED':>11}  POINT / REASON",
    ]
    for vm in vms_failures_first(job.vms):
        vt = vm.totals()
        cbt = "yes" if vm.disks and all(x.cbt_used for x in vm.disks) else "no"
        tail = vm.point_id if vm.status == VM_OK else vm.reason
        lines.append(
            f"{vm.name[:24]:<24} {vm_status_word(vm):<8} {cbt:<5} "
            f"{human_bytes(vt['bytes_read']):>11} "
            f"{human_bytes(vt['bytes_stored']):>11}  {tail or ''}"
        )
    lines += ["", "-- hcbak"]
    return "\n".join(lines) + "\n"


def build_message(sender: str, to: Sequence[str], subject: str, body: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid(domain="hcbak")
    msg.set_content(body)
    return msg


def _is_loopback(host: str) -> bool:
    """Only this machine may see a password sent in clear (a local relay)."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def send_email(smtp: SMTPConfig, to: Sequence[str], subject: str, body: str) -> None:
    """Send through `smtp` (config SMTPConfig); HcbakError with a one-line reason."""
    msg = build_message(smtp.sender, to, subject, body)
    security = (smtp.security or "starttls").lower()
    if security == "none" and smtp.username and not _is_loopback(smtp.host):
        raise ConfigError(
            f"refusing to send the SMTP password unencrypted to {smtp.host} (security: none)",
            hint="use security: starttls or ssl, or a relay on this host without a login",
        )
    context = ssl.create_default_context()
    if getattr(smtp, "insecure", False):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        client: smtplib.SMTP
        if security == "ssl":
            client = smtplib.SMTP_SSL(smtp.host, smtp.port, timeout=SEND_TIMEOUT, context=context)
        else:
            client = smtplib.SMTP(smtp.host, smtp.port, timeout=SEND_TIMEOUT)
        with client:
            if security == "starttls":
                client.starttls(context=context)
            if smtp.username:
                password = smtp.password.resolve().reveal() if smtp.password else ""
                client.login(smtp.username, password)
            client.send_message(msg)
    except (smtplib.SMTPException, OSError) as exc:  # includes ssl errors and timeouts
        # The exception text of smtplib never contains the password; keep it short.
        raise HcbakError(
            f"email to {', '.join(to)} via {smtp.host}:{smtp.port} failed: "
            f"{type(exc).__name__}: {str(exc)[:200]}"
        )
