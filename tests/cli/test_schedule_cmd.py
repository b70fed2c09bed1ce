"""`hcbak schedule show|install|remove`: systemd units for the jobs' schedules.

Real `hcbak` subprocesses with HOME and XDG_CONFIG_HOME inside tmp_path. systemctl is
never run for real: `--enable`/`--disable` are checked against a stand-in `systemctl`
on PATH that records its arguments (there is no systemd manager to talk to here, and
a test must not change the host's timers).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from harness import HCBAK, RunHcbak

from hcbak.cli.schedule_cmd import DUE_ZONE
from hcbak.systemd_units import MARKER

from .helpers import BASE, expect

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
JOBS = """\
jobs:
  nightly: {cluster: prod, repo: main, vms: [web01], schedule: "0 1 * * *"}
  twice-monthly: {cluster: prod, repo: main, vms: [db01], schedule: "30 2 1,15 * fri"}
  adhoc: {cluster: prod, repo: main, vms: [scratch01]}
"""
USER_ENABLE = "systemctl --user daemon-reload && systemctl --user enable --now hcbak.timer"
VENV_HCBAK = Path(sys.executable).parent / "hcbak"


@pytest.fixture
def jobs_config(base_config: Path) -> Path:
    base_config.write_text(BASE + JOBS)
    return base_config


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "home").mkdir()
    return {"HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}


@pytest.fixture
def systemctl_log(tmp_path: Path, home: dict[str, str]) -> Path:
    """A stand-in systemctl first on PATH; returns the file its calls are logged to."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    log = tmp_path / "systemctl.log"
    fake = bin_dir / "systemctl"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    fake.chmod(0o755)
    home["PATH"] = f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    return log


def _unit_dir(home: dict[str, str]) -> Path:
    return Path(home["XDG_CONFIG_HOME"]) / "systemd" / "user"


def test_show_prints_the_unit_pair_and_the_crontab_line(
    run_hcbak: RunHcbak, jobs_config: Path, home: dict[str, str]
) -> None:
    proc = run_hcbak("schedule", "show", "--hcbak", "/usr/bin/hcbak", env=home, check=True)
    out = proc.stdout
    assert f"# {_unit_dir(home)}/hcbak.service" in out and f"# {_unit_dir(home)}/hcbak.timer" in out
    assert f"ExecStart=/usr/bin/hcbak --config {jobs_config} job run --due" in out
    assert "OnCalendar=*-*-* 01:00:00\n" in out and "Persistent=true" in out
    # cron: "the 1st, the 15th, or any Friday" is two OnCalendar= lines (systemd ANDs)
    assert "OnCalendar=*-*-01,15 02:30:00\nOnCalendar=Fri *-*-* 02:30:00\n" in out
    assert f"*/15 * * * * /usr/bin/hcbak --config {jobs_config} job run --due" in out
    assert "job adhoc has no schedule" in proc.stderr
    assert not _unit_dir(home).exists()  # show writes nothing

    report = json.loads(
        run_hcbak("schedule", "show", "--json", "--every", "10", env=home, check=True).stdout
    )
    assert report["enable_command"] == USER_ENABLE and report["every_minutes"] == 10
    assert "OnCalendar=*-*-* *:00/10:00" in report["timer"] and "# job" not in report["timer"]
    assert report["crontab"].startswith("*/10 * * * * ")
    assert [j["job"] for j in report["jobs"]] == ["nightly", "twice-monthly"]
    assert report["unscheduled"] == ["adhoc"] and report["installed"] == "absent"
    assert report["service_path"] == str(_unit_dir(home) / "hcbak.service")


@pytest.mark.skipif(not VENV_HCBAK.is_file(), reason="no hcbak console script next to python")
def test_the_units_run_the_hcbak_that_wrote_them(
    hcbak_env: dict[str, str], jobs_config: Path, home: dict[str, str]
) -> None:
    proc = subprocess.run(
        [str(VENV_HCBAK), "schedule", "show", "--json"],
        env={**hcbak_env, **home, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    service = json.loads(proc.stdout)["service"]
    assert f"ExecStart={VENV_HCBAK} --config {jobs_config} job run --due" in service


def test_install_writes_the_units_show_prints_and_remove_takes_them_away(
    run_hcbak: RunHcbak,
    jobs_config: Path,
    home: dict[str, str],
    systemctl_log: Path,
    tmp_path: Path,
) -> None:
    hcbak = ["--hcbak", str(VENV_HCBAK)]
    shown = json.loads(run_hcbak("schedule", "show", *hcbak, "--json", env=home).stdout)
    proc = run_hcbak("schedule", "install", *hcbak, "--yes", env=home, check=True)
    units = _unit_dir(home)
    assert (units / "hcbak.service").read_text() == shown["service"]
    assert (units / "hcbak.timer").read_text() == shown["timer"]
    assert f"To start the timer, run: {USER_ENABLE}" in proc.stdout
    assert not systemctl_log.exists()  # printed, not run

    again = run_hcbak("schedule", "install", *hcbak, "--yes", "--json", env=home, check=True)
    assert [f["action"] for f in json.loads(again.stdout)["files"]] == ["unchanged"] * 2
    shown = json.loads(run_hcbak("schedule", "show", *hcbak, "--json", env=home).stdout)
    assert shown["installed"] == "current"

    # a new schedule: show says the installed timer is out of date, install updates it
    jobs_config.write_text(jobs_config.read_text().replace('"0 1 * * *"', '"0 4 * * *"'))
    proc = run_hcbak("schedule", "show", *hcbak, "--json", env=home, check=True)
    assert json.loads(proc.stdout)["installed"] == "outdated"
    assert "run `hcbak schedule install` again" in proc.stderr
    again = run_hcbak("schedule", "install", *hcbak, "--yes", "--json", env=home, check=True)
    assert [f["action"] for f in json.loads(again.stdout)["files"]] == ["unchanged", "written"]
    assert "OnCalendar=*-*-* 04:00:00\n" in (units / "hcbak.timer").read_text()

    proc = run_hcbak("schedule", "remove", "--yes", "--json", env=home, check=True)
    report = json.loads(proc.stdout)
    assert report["removed"] == [str(units / "hcbak.service"), str(units / "hcbak.timer")]
    assert report["left"] == [] and not report["disabled"]
    assert not (units / "hcbak.service").exists() and not (units / "hcbak.timer").exists()
    proc = run_hcbak("schedule", "remove", "--yes", env=home, check=True)
    assert f"nothing to remove in {units}" in proc.stdout
    assert not systemctl_log.exists()


def _analyze_verify(units: list[Path], scope: list[str], tmp_path: Path) -> str:
    """stderr of `systemd-analyze verify [--user] UNITS` (a user manager needs a
    runtime folder of its own)."""
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    proc = subprocess.run(
        ["systemd-analyze", "verify", *scope, *map(str, units)],
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze not installed: the generated units were not verified",
)
@pytest.mark.parametrize(
    "options", [[], ["--system"], ["--every", "10"]], ids=["user", "system", "every"]
)
def test_systemd_analyze_verify_accepts_the_units(
    run_hcbak: RunHcbak, jobs_config: Path, home: dict[str, str], tmp_path: Path, options: list[str]
) -> None:
    """verify exits 0 even for an OnCalendar= it cannot parse (it warns on stderr and
    ignores the line), so a silent stderr is the check; a broken copy shows it speaks up."""
    folder = tmp_path / "units"
    run_hcbak(
        "schedule", "install", *options, "--unit-dir", str(folder),
        "--hcbak", str(VENV_HCBAK), "--yes", env=home, check=True,
    )  # fmt: skip
    scope = [] if "--system" in options else ["--user"]
    units = [folder / "hcbak.timer", folder / "hcbak.service"]
    assert _analyze_verify(units, scope, tmp_path) == ""
    broken = tmp_path / "broken"
    broken.mkdir()
    for unit in units:
        text = unit.read_text().replace("Persistent=", "OnCalendar=*-*-* 25:00:00\nPersistent=")
        (broken / unit.name).write_text(text)
    assert "calendar specification" in _analyze_verify(
        [broken / "hcbak.timer", broken / "hcbak.service"], scope, tmp_path
    )


def test_enable_and_disable_run_systemctl_only_when_asked(
    run_hcbak: RunHcbak, jobs_config: Path, home: dict[str, str], systemctl_log: Path
) -> None:
    proc = run_hcbak("schedule", "install", "--yes", "--enable", env=home, check=True)
    assert f"enabled: {USER_ENABLE}" in proc.stdout
    assert systemctl_log.read_text().splitlines() == [
        "--user daemon-reload",
        "--user enable --now hcbak.timer",
    ]
    run_hcbak("schedule", "remove", "--yes", "--disable", env=home, check=True)
    assert systemctl_log.read_text().splitlines()[2:] == [
        "--user disable --now hcbak.timer",
        "--user daemon-reload",
    ]
    assert not any(_unit_dir(home).iterdir())

    # a systemctl that fails is exit 4, naming the step; the units stay written
    fake = Path(home["PATH"].split(":")[0]) / "systemctl"
    fake.write_text("#!/bin/sh\nexit 3\n")
    proc = run_hcbak("schedule", "install", "--yes", "--enable", env=home)
    expect(proc, 4, "`systemctl --user daemon-reload` exited 3")
    assert (_unit_dir(home) / "hcbak.timer").is_file()


def test_system_units_go_where_asked_with_the_system_manager_line(
    run_hcbak: RunHcbak, jobs_config: Path, home: dict[str, str], tmp_path: Path
) -> None:
    # --unit-dir: the test runs as root on CI, and must not write /etc/systemd/system
    folder = tmp_path / "system-units"
    proc = run_hcbak(
        "schedule", "install", "--system", "--unit-dir", str(folder), "--yes", "--json", env=home
    )
    report = json.loads(proc.stdout)
    assert (
        report["enable_command"] == "systemctl daemon-reload && systemctl enable --now hcbak.timer"
    )
    assert "After=network-online.target" in (folder / "hcbak.service").read_text()
    assert not _unit_dir(home).exists()


def test_files_that_are_not_ours_are_neither_replaced_nor_removed(
    run_hcbak: RunHcbak, jobs_config: Path, home: dict[str, str]
) -> None:
    units = _unit_dir(home)
    units.mkdir(parents=True)
    (units / "hcbak.timer").write_text("[Timer]\nOnCalendar=daily\n")
    proc = run_hcbak("schedule", "install", "--yes", env=home)
    expect(proc, 2, f"{units / 'hcbak.timer'} exists and was not written by hcbak", "--force")
    assert not (units / "hcbak.service").exists()  # nothing half-installed
    assert (units / "hcbak.timer").read_text() == "[Timer]\nOnCalendar=daily\n"

    # remove deletes our service and leaves their timer: exit 1, named in a warning
    (units / "hcbak.service").write_text(MARKER + "\n[Service]\n")
    proc = run_hcbak("schedule", "remove", "--yes", env=home)
    expect(proc, 1, f"left {units / 'hcbak.timer'}: it was not written by hcbak")
    assert not (units / "hcbak.service").exists()
    assert (units / "hcbak.timer").read_text() == "[Timer]\nOnCalendar=daily\n"

    run_hcbak("schedule", "install", "--yes", "--force", env=home, check=True)
    assert (units / "hcbak.timer").read_text().startswith(MARKER)


def _on_a_terminal(args: list[str], env: dict[str, str], answer: str) -> str:
    """Run hcbak with its stdin on a pseudo-terminal, answer the prompt, return stdout."""
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(
            [*HCBAK, *args], stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env, text=True,
        )  # fmt: skip
        os.write(master, answer.encode() + b"\n")
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(master)
        os.close(slave)
    assert proc.returncode == 0, err
    return out


def test_on_a_terminal_install_and_remove_ask_first(
    hcbak_env: dict[str, str], jobs_config: Path, home: dict[str, str]
) -> None:
    env = {**hcbak_env, **home}
    units = _unit_dir(home)
    out = _on_a_terminal(["schedule", "install"], env, "n")
    assert f"Write {units / 'hcbak.service'} and {units / 'hcbak.timer'}?" in out
    assert not units.exists()
    _on_a_terminal(["schedule", "install"], env, "y")
    assert (units / "hcbak.timer").is_file()
    _on_a_terminal(["schedule", "remove"], env, "n")
    assert (units / "hcbak.timer").is_file()
    _on_a_terminal(["schedule", "remove"], env, "y")
    assert not (units / "hcbak.timer").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["schedule", "install"], "not a terminal, so nobody can confirm (pass --yes)"),
        (["schedule", "show", "--every", "0"], "--every"),
        (["schedule", "show", "--every", "60"], "--every"),
        (["schedule", "remove", "--bogus"], "No such option"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(
    run_hcbak: RunHcbak, jobs_config: Path, home: dict[str, str], args: list[str], message: str
) -> None:
    expect(run_hcbak(*args, env=home), 2, message)
    assert not Path(home["XDG_CONFIG_HOME"]).exists()


def test_without_a_scheduled_job_or_a_config_exits_2(
    run_hcbak: RunHcbak, config_path: Path, base_config: Path, home: dict[str, str]
) -> None:
    expect(run_hcbak("schedule", "show", env=home), 2, "no job in", "has a schedule", "--every")
    assert (
        "OnCalendar=*-*-* *:00/05:00"
        in run_hcbak("schedule", "show", "--every", "5", env=home, check=True).stdout
    )
    config_path.unlink()
    expect(run_hcbak("schedule", "install", "--yes", env=home), 2, str(config_path))


def test_committed_example_units_match_what_schedule_show_prints(run_hcbak: RunHcbak) -> None:
    proc = run_hcbak(
        "--config", str(EXAMPLES / "config.yaml"), "schedule", "show", "--system",
        "--hcbak", "/usr/local/bin/hcbak", "--unit-config", "/etc/hcbak/config.yaml", "--json",
        check=True,
    )  # fmt: skip
    report = json.loads(proc.stdout)
    regenerate = "regenerate with the command in examples/systemd/README.md"
    assert (EXAMPLES / "systemd" / "hcbak.service").read_text() == report["service"], regenerate
    assert (EXAMPLES / "systemd" / "hcbak.timer").read_text() == report["timer"], regenerate


def test_the_timer_and_job_run_due_read_schedules_in_the_same_zone(
    run_hcbak: RunHcbak, config_path: Path, hcbak_env: dict[str, str], home: dict[str, str]
) -> None:
    """On a host not on UTC, the job is due exactly when the timer wakes hcbak.

    The schedule names the host's local minute (+05:30) three minutes ago, and the job
    last ran ten minutes ago. `job run --due` reads schedules in local time, as cron
    does (docs/config.md), so the job is due now; read in UTC it would not be (until
    then it was, against the docs). The timer must say the same zone (none: local), or
    it wakes hcbak hours off and the job never comes due on time.
    """
    now = datetime.now(UTC)
    kolkata = timezone(timedelta(hours=5, minutes=30))  # no DST: a fixed offset is exact
    fired = now.astimezone(kolkata).replace(second=0, microsecond=0) - timedelta(minutes=3)
    config_path.write_text(
        'clusters:\n  prod: {nodes: ["127.0.0.1:9"], username: hcbak, password_env: '
        "HCBAK_TEST_PW, tls: {insecure: true}, retries: 0}\n"
        f"repositories:\n  main: {{path: {config_path.parent / 'repo'}}}\n"
        "jobs:\n  nightly: {cluster: prod, repo: main, vms: [web01], retries: 0, "
        f'schedule: "{fired.minute} {fired.hour} * * *"}}\n'
    )
    history = Path(hcbak_env["HCBAK_STATE_DIR"]) / "jobs" / "nightly.json"
    history.parent.mkdir(parents=True)
    last = (now - timedelta(minutes=10)).isoformat()
    history.write_text(json.dumps({"last_run": last, "last_success": last}))
    env = {**home, "TZ": "Asia/Kolkata"}

    timer = json.loads(run_hcbak("schedule", "show", "--json", env=env, check=True).stdout)
    assert DUE_ZONE is None, "the timer's OnCalendar= carries no zone: local time"
    assert f"OnCalendar=*-*-* {fired:%H:%M}:00\n" in timer["timer"]
    proc = run_hcbak("job", "run", "--due", "--json", env=env, timeout=60)
    ran = [job["job"] for job in json.loads(proc.stdout)["jobs"]]
    assert ran == ["nightly"], (
        "job run --due no longer reads schedules in local time: change DUE_ZONE in "
        "hcbak/cli/schedule_cmd.py to match",
        proc.stderr,
    )
