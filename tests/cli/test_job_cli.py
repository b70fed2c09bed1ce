"""`hcbak job create|list|show|edit|remove` through the real entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from harness import RunHcbak

from .helpers import expect

CREATE = ["job", "create", "nightly", "--cluster", "prod", "--repo", "main"]
SMTP = "smtp: {host: localhost, sender: hcbak@example.com}\n"


def test_create_with_every_option_round_trips_through_show_json(
    run_inproc: RunHcbak, base_config: Path
) -> None:
    base_config.write_text(base_config.read_text() + SMTP)
    proc = run_inproc(
        *CREATE,
        "--vm", "web01", "--vm", "db01", "--tag", "nightly", "--exclude", "scratch",
        "--disk", "0", "--keep-last", "7", "--keep-daily", "14", "--keep-weekly", "8",
        "--keep-monthly", "12", "--keep-yearly", "2", "--keep-within", "2d",
        "--schedule", "0 1 * * *", "--parallel", "2", "--retries", "3", "--retry-wait", "30",
        "--notify-email", "ops@example.com", "--notify-on", "failure", "--notify-on", "success",
        "--pre-hook", "/bin/pre", "--post-hook", "/bin/post", "--alert-after", "36h",
        "--prune", "after_run", "--quiesce",
    )  # fmt: skip
    expect(proc, 0, "job 'nightly' saved")
    shown = json.loads(run_inproc("job", "show", "nightly", "--json", check=True).stdout)
    assert shown == {
        "name": "nightly",
        "cluster": "prod",
        "repo": "main",
        "vms": ["web01", "db01"],
        "tags": ["nightly"],
        "exclude": ["scratch"],
        "disks": ["0"],
        "retention": {
            "keep_last": 7, "keep_daily": 14, "keep_weekly": 8, "keep_monthly": 12,
            "keep_yearly": 2, "keep_within": "2d",
        },
        "schedule": "0 1 * * *",
        "parallel": 2,
        "retries": 3,
        "retry_wait": 30.0,
        "alert_after": "36h",
        "prune": "after_run",
        "quiesce": True,
        "notify": {"email": {"to": ["ops@example.com"], "on": ["failure", "success"]}},
        "hooks": {"pre": "/bin/pre", "post": "/bin/post"},
    }  # fmt: skip
    listed = json.loads(run_inproc("job", "list", "--json", check=True).stdout)["jobs"]
    assert listed == [shown]
    table = run_inproc("job", "list", check=True).stdout.splitlines()
    assert table[0].split("\t") == ["NAME", "CLUSTER", "REPO", "SELECTION", "SCHEDULE", "RETENTION"]
    assert table[1].startswith("nightly\tprod\tmain\tweb01, db01, tag:nightly (except scratch)")


def test_edit_changes_only_the_options_given(run_inproc: RunHcbak, base_config: Path) -> None:
    run_inproc(*CREATE, "--vm", "web01", "--keep-last", "7", "--schedule", "0 1 * * *",
              "--pre-hook", "/bin/pre", check=True)  # fmt: skip
    before = yaml.safe_load(base_config.read_text())["jobs"]["nightly"]
    proc = run_inproc("job", "edit", "nightly", "--parallel", "8", "--schedule", "", "--vm", "a")
    expect(proc, 0, "job 'nightly' updated")
    after = yaml.safe_load(base_config.read_text())["jobs"]["nightly"]
    assert after["parallel"] == 8 and after["vms"] == ["a"] and "schedule" not in after
    del before["parallel"], before["vms"], before["schedule"]
    del after["parallel"], after["vms"]
    assert after == before
    text = run_inproc("job", "show", "nightly", check=True).stdout
    assert "parallel:    8" in text and "retention:   last=7" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["job", "create", "bad.name", "--cluster", "prod", "--repo", "main", "--vm", "x"],
         "may contain only letters"),
        (["job", "create", "j", "--cluster", "prd", "--repo", "main", "--vm", "x"],
         "no cluster named 'prd' (did you mean 'prod'?)"),
        (["job", "create", "j", "--cluster", "prod", "--repo", "nope", "--vm", "x"],
         "no repository named 'nope'"),
        (["job", "create", "j", "--repo", "main", "--vm", "x"], "Missing option '--cluster'"),
        ([*CREATE], "selects no VMs"),
        ([*CREATE, "--vm", "x", "--schedule", "0 24 * * *"], "--schedule: cron hour: 24"),
        ([*CREATE, "--vm", "x", "--keep-within", "2 days"], "--keep-within: bad duration"),
        ([*CREATE, "--vm", "x", "--keep-last", "-1"], "Invalid value"),
        ([*CREATE, "--vm", "x", "--parallel", "0"], "Invalid value"),
        ([*CREATE, "--vm", "x", "--prune", "sometimes"], "not one of after_run, never"),
        ([*CREATE, "--vm", "x", "--disk", "floppyx"], "--disk: disk 'floppyx' is not a slot"),
        ([*CREATE, "--vm", "x", "--notify-email", "ops@example.com"], "needs an `smtp:` section"),
        ([*CREATE, "--vm", "x", "--notify-on", "failure"], "--notify-on needs --notify-email"),
        (["job", "show", "nighty"], "no job named 'nighty'"),
        (["job", "edit", "nighty", "--vm", "x"], "no job named 'nighty'"),
        (["job", "remove", "nighty"], "no job named 'nighty'"),
    ],
)  # fmt: skip
def test_bad_job_input_exits_2_with_reason(
    run_inproc: RunHcbak, base_config: Path, args: list[str], message: str
) -> None:
    before = base_config.read_bytes()
    expect(run_inproc(*args), 2, message)
    assert base_config.read_bytes() == before  # nothing half-written


def test_job_edit_without_options_changes_nothing_and_says_so(
    run_inproc: RunHcbak, base_config: Path
) -> None:
    expect(run_inproc(*CREATE, "--vm", "web01"), 0, "")
    before = base_config.read_bytes()
    expect(run_inproc("job", "edit", "nightly"), 2, "nothing to change")
    assert base_config.read_bytes() == before


def test_duplicate_job_is_refused_unless_force(run_inproc: RunHcbak, base_config: Path) -> None:
    run_inproc(*CREATE, "--vm", "a", check=True)
    expect(run_inproc(*CREATE, "--vm", "b"), 2, "job 'nightly' already exists", "--force")
    expect(run_inproc(*CREATE, "--vm", "b", "--force"), 0)
    assert yaml.safe_load(base_config.read_text())["jobs"]["nightly"]["vms"] == ["b"]
    expect(run_inproc("job", "remove", "nightly"), 0, "job 'nightly' removed")
    assert json.loads(run_inproc("job", "list", "--json", check=True).stdout) == {"jobs": []}


def test_a_job_run_in_process_gives_the_logging_level_back(
    run_inproc: RunHcbak, base_config: Path
) -> None:
    """hcbak as a library (or tests) must not keep the run log's INFO level on the
    `hcbak` logger: a caller's DEBUG capture would lose every later record."""
    import logging

    logger = logging.getLogger("hcbak")
    before = logger.level
    logger.setLevel(logging.NOTSET)
    try:
        expect(run_inproc("job", "run", "--due"), 0, "no job is due")
        assert logger.level == logging.NOTSET
        assert not [h for h in logger.handlers if isinstance(h, logging.FileHandler)]
    finally:
        logger.setLevel(before)
