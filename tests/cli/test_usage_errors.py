"""Parser errors keep the one-line promise of docs/exit-codes.md: `error: ...`, exit 2.

Click's own report is a four-line block (usage, "Try ...", blank, "Error: ...") that
breaks scripts reading the first stderr line and clutters cron mail.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from harness import RunHcbak

from .helpers import expect

JOB = ["job", "create", "j", "--cluster", "prod", "--repo", "main", "--vm", "x"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "error: No such option: --bogus (see 'hcbak -h')"),
        (["job", "run", "--bogus"], "error: No such option: --bogus (see 'hcbak job run -h')"),
        (["job", "create", "j", "--repo", "main", "--vm", "x"],
         "error: Missing option '--cluster' (see 'hcbak job create -h')"),
        (["repo", "prune"], "error: Missing argument 'name' (see 'hcbak repo prune -h')"),
        (["job", "run", "--parallel", "0"],
         "error: Invalid value for '--parallel': 0 is not in the range x>=1 "
         "(see 'hcbak job run -h')"),
        ([*JOB, "--keep-last", "-1"],
         "error: Invalid value for '--keep-last': -1 is not in the range x>=0 "
         "(see 'hcbak job create -h')"),
        (["repo", "verify", "main", "--read-data=-5"],
         "error: Invalid value for '--read-data': '-5' is not a percentage from 0 to 100"),
        (["repo", "verify", "main", "--read-data=abc"],
         "error: Invalid value for '--read-data': 'abc' is not a percentage from 0 to 100"),
        (["restroe", "disk"], "Did you mean 'restore'? (see 'hcbak -h')"),
    ],
)  # fmt: skip
def test_a_parser_error_is_one_line_and_exits_2(
    run_hcbak: RunHcbak, base_config: Path, args: list[str], message: str
) -> None:
    proc = run_hcbak(*args)
    expect(proc, 2, message)
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stdout == ""


def test_a_group_without_a_command_still_shows_its_help(run_inproc: RunHcbak) -> None:
    proc = run_inproc("repo")
    assert proc.returncode == 2
    shown = proc.stdout + proc.stderr  # rich writes the help to stdout
    assert "Usage: hcbak repo" in shown and "verify" in shown
    assert "error:" not in shown


def test_read_data_is_a_documented_option_with_an_optional_percentage(
    run_hcbak: RunHcbak, run_inproc: RunHcbak, tmp_path: Path
) -> None:
    assert "--read-data" in run_inproc("repo", "verify", "-h").stdout
    run_inproc("repo", "add", "main", "--path", str(tmp_path / "repo"), check=True)
    for args, percent in [
        (["main", "--read-data"], 100),
        (["--read-data", "main"], 100),  # a name after it is not its value
        (["main", "--read-data", "50", "--json"], 50),
        (["main", "--read-data=5%"], 5),
        (["main"], 0),
    ]:
        run_hcbak("repo", "verify", *args, check=True)
        shown = json.loads(run_inproc("repo", "show", "main", "--json", check=True).stdout)
        assert shown["last_verify"]["read_data_percent"] == percent, args


def _refused_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_cluster_test_after_a_failed_login_says_not_checked_and_json_has_nulls(
    run_hcbak: RunHcbak, config_path: Path
) -> None:
    config_path.write_text(
        "clusters:\n  lab:\n"
        f"    nodes: ['{_refused_address()}']\n"
        "    username: u\n    password_env: HCBAK_TEST_PW\n    tls: {insecure: true}\n"
        "    worker_vm: w\n    timeouts: {connect: 1, read: 1}\n    retries: 1\n"
    )
    env = {"HCBAK_TEST_PW": "x"}
    text = run_hcbak("cluster", "test", "lab", env=env)
    expect(text, 4, "login failed")
    assert "worker VM:     not checked (login failed)" in text.stdout
    assert "NOT FOUND" not in text.stdout
    proc = run_hcbak("cluster", "test", "lab", "--json", env=env)
    expect(proc, 4, "login failed")
    report = json.loads(proc.stdout)
    assert report["login_ok"] is False and report["worker_vm"] == "w"
    for key in ("cluster_name", "worker_vm_uuid", "worker_hint", "update_detail"):
        assert report[key] is None, key
    assert report["nodes"][0]["version"] is None and report["nodes"][0]["error"] == "refused"
