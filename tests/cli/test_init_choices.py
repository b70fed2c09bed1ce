"""The answers `hcbak init` accepts (hcbak/cli/init_choices.py), and `notify smtp`."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from hcbak.cli.init_choices import (
    RETENTION_PRESETS,
    discovered_addresses,
    parse_exclusions,
    parse_retention,
    parse_schedule,
    parse_secret_source,
    parse_selection,
    secret_flags,
)
from hcbak.cli.init_job import job_create_argv
from hcbak.cli.job import JobOptions

from .helpers import expect

RunHcbak = Callable[..., subprocess.CompletedProcess[str]]
VMS = {"web01": ["nightly"], "db01": ["nightly", "sql"], "mail01": []}


@pytest.mark.parametrize(
    ("answer", "flags"),
    [
        ("env:HC_PW", ["--password-env", "HC_PW"]),
        ("file:/etc/hcbak/pw", ["--password-file", "/etc/hcbak/pw"]),
        ("cmd:pass show hc", ["--password-command", "pass show hc"]),
    ],
)
def test_a_secret_source_becomes_the_matching_reference_flag(answer: str, flags: list[str]) -> None:
    assert secret_flags("password", parse_secret_source(answer)) == flags


@given(st.text())
def test_a_typed_secret_is_never_taken_as_the_secret_itself(text: str) -> None:
    """Whatever is typed becomes a reference, or is refused: never an inline value."""
    try:
        ref = parse_secret_source(text)
    except ValueError:
        return
    assert not ref.is_inline()
    assert text.strip().split(":", 1)[0] in ("env", "file", "cmd")


@pytest.mark.parametrize(
    ("answer", "reason"),
    [("hunter2", "give env:VARIABLE"), ("env:", "needs a value"), ("env:1X", "not an environment")],
)
def test_a_bad_secret_source_is_refused_with_the_reason(answer: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_secret_source(answer)


def test_selection_takes_names_and_tags_from_the_live_list() -> None:
    picked = parse_selection("web01, tag:sql web01", VMS)
    assert (picked.vms, picked.tags) == (["web01"], ["sql"])
    with pytest.raises(ValueError, match="no VM named 'web9'"):
        parse_selection("web9", VMS)
    with pytest.raises(ValueError, match=r"no VM has the tag 'x' \(tags on the cluster: "):
        parse_selection("tag:x", VMS)
    with pytest.raises(ValueError, match="at least one"):
        parse_selection(" , ", VMS)


def test_exclusions_must_be_selected_and_leave_something() -> None:
    assert parse_exclusions("", ["web01", "db01"]) == []
    assert parse_exclusions("db01", ["web01", "db01"]) == ["db01"]
    with pytest.raises(ValueError, match="not among the selected"):
        parse_exclusions("mail01", ["web01", "db01"])
    with pytest.raises(ValueError, match="leaves no VM"):
        parse_exclusions("web01 db01", ["web01", "db01"])


def test_retention_presets_and_custom_pairs() -> None:
    assert parse_retention("1") == {"keep_daily": 14, "keep_weekly": 8, "keep_monthly": 12}
    assert parse_retention(str(len(RETENTION_PRESETS))) == {}
    assert parse_retention("daily=7 last=3 within=2d") == {
        "keep_daily": 7, "keep_last": 3, "keep_within": "2d",
    }  # fmt: skip
    for bad, reason in [("0", "from 1 to 4"), ("hourly=3", "KEY=VALUE"), ("daily=x", "a count"),
                        ("within=2x", "bad duration")]:  # fmt: skip
        with pytest.raises(ValueError, match=reason):
            parse_retention(bad)


def test_schedule_presets_and_cron() -> None:
    assert parse_schedule("1") == "0 1 * * *"
    assert parse_schedule("4") is None
    assert parse_schedule(" 30  2 * * 1-5 ") == "30 2 * * 1-5"
    with pytest.raises(ValueError, match="nor a cron expression"):
        parse_schedule("daily")


def test_nodes_come_from_the_first_nodes_list_with_the_first_first() -> None:
    real = [{"lanIP": "10.0.0.12"}, {"lanIP": "10.0.0.11"}, {"lanIP": ""}]
    assert discovered_addresses("10.0.0.11", real) == ["10.0.0.11", "10.0.0.12"]
    # behind port forwarding: the peers keep the first node's port
    assert discovered_addresses("10.0.0.11:8443", real) == [
        "10.0.0.11:8443", "10.0.0.12:8443",
    ]  # fmt: skip
    sim = [{"lanIP": "127.0.0.1", "simPort": 4001}, {"lanIP": "127.0.0.1", "simPort": 4002}]
    assert discovered_addresses("127.0.0.1:4002", sim) == ["127.0.0.1:4002", "127.0.0.1:4001"]


@given(st.lists(st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3", ""]), max_size=6))
def test_discovered_addresses_start_with_the_first_and_never_repeat(ips: list[str]) -> None:
    found = discovered_addresses("10.0.0.2", [{"lanIP": ip} for ip in ips])
    assert found[0] == "10.0.0.2" and len(found) == len(set(found))
    assert set(found) == {"10.0.0.2", *(ip for ip in ips if ip)}


def test_the_printed_job_create_line_makes_exactly_the_job_asked(
    run_inproc: RunHcbak, base_config: Path
) -> None:
    """What step 5 prints is what runs: the argv, given to the real parser, makes a job
    with every option the answers (and flags) set."""
    base_config.write_text(base_config.read_text() + "smtp: {host: h, sender: a@b.c}\n")
    opts = JobOptions(
        cluster="prod", repo="main", vms=["web 01"], tags=["nightly"], exclude=["db01"],
        disks=["0"], keep={"keep_daily": 14, "keep_within": "2d"}, schedule="0 1 * * *",
        parallel=2, retries=1, retry_wait=2.5, notify_email=["ops@example.com"],
        notify_on=["failure"], pre_hook="echo 'a b'", alert_after="36h", prune="never",
        quiesce=False,
    )  # fmt: skip
    expect(run_inproc(*job_create_argv("j", opts)), 0)
    shown = json.loads(run_inproc("job", "show", "j", "--json", check=True).stdout)
    assert (shown["vms"], shown["tags"], shown["exclude"], shown["disks"]) == (
        ["web 01"], ["nightly"], ["db01"], ["0"],
    )  # fmt: skip
    assert shown["retention"]["keep_daily"] == 14 and shown["retention"]["keep_within"] == "2d"
    assert (shown["schedule"], shown["parallel"], shown["retries"], shown["retry_wait"]) == (
        "0 1 * * *", 2, 1, 2.5,
    )  # fmt: skip
    assert shown["notify"] == {"email": {"to": ["ops@example.com"], "on": ["failure"]}}
    assert (shown["hooks"]["pre"], shown["alert_after"], shown["prune"], shown["quiesce"]) == (
        "echo 'a b'", "36h", "never", False,
    )  # fmt: skip


# --- hcbak notify smtp --------------------------------------------------------------------
def test_notify_smtp_sets_the_section_with_the_usual_port_and_a_password_reference(
    run_inproc: RunHcbak, base_config: Path
) -> None:
    proc = run_inproc("notify", "smtp", "--host", "mail.example.com", "--sender",
                      "hcbak@example.com", "--security", "ssl", "--username", "hcbak",
                      "--password-env", "SMTP_PW")  # fmt: skip
    expect(proc, 0, "smtp server mail.example.com:465")
    smtp = yaml.safe_load(base_config.read_text())["smtp"]
    assert smtp == {"host": "mail.example.com", "port": 465, "security": "ssl",
                    "username": "hcbak", "password_env": "SMTP_PW",
                    "sender": "hcbak@example.com"}  # fmt: skip
    # a second call replaces the section
    expect(run_inproc("notify", "smtp", "--host", "relay", "--sender", "a@b.c", "--security",
                      "none"), 0)  # fmt: skip
    assert yaml.safe_load(base_config.read_text())["smtp"] == {
        "host": "relay", "port": 25, "security": "none", "sender": "a@b.c",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--sender", "nope"], "--sender: 'nope' is not an email address"),
        (["--sender", "a@b.c", "--security", "tls"], "--security must be one of"),
        (["--sender", "a@b.c", "--password-env", "X"], "a password option needs --username"),
    ],
)
def test_notify_smtp_refuses_bad_input_and_changes_nothing(
    run_inproc: RunHcbak, base_config: Path, args: list[str], reason: str
) -> None:
    before = base_config.read_bytes()
    expect(run_inproc("notify", "smtp", "--host", "h", *args), 2, reason)
    assert base_config.read_bytes() == before
