"""`hcbak schedule show|install|remove`: a systemd timer that runs `hcbak job run --due`.

The modern alternative to the crontab line (examples/crontab): the timer fires on the
jobs' own schedules and, with `Persistent=true`, catches up a start missed while the
host was off. The unit text is built in `hcbak/systemd_units.py`; this module finds
the config, the hcbak executable and the unit folder, and writes or removes files.

systemctl is run only when asked (`--enable`, `--disable`); otherwise the command
prints the line to run, so nothing here changes what systemd does behind the user's back.
"""

import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from hcbak.cli.common import load_config, stdin_is_tty
from hcbak.cli.options import JsonOpt
from hcbak.cli.output import emit_json, info, warn
from hcbak.errors import ExitCode, HcbakError, UsageError
from hcbak.systemd_units import (
    MARKER,
    SERVICE_NAME,
    TIMER_NAME,
    crontab_line,
    plan_times,
    service_unit,
    timer_unit,
)

app = typer.Typer(
    help="Run due jobs from a systemd timer (or cron): show, install, remove the units.",
    no_args_is_help=True,
)

SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
# The zone `hcbak job run --due` reads schedules in: the worker's local wall clock, as
# cron's (hcbak/engine/runner.py, docs/config.md); None writes OnCalendar= without a zone,
# which systemd reads as local time. tests/cli/test_schedule_cmd.py pins the two.
DUE_ZONE: str | None = None

SystemOpt = Annotated[
    bool,
    typer.Option(
        "--system",
        help="System units in /etc/systemd/system (needs root) instead of user units "
        "in ~/.config/systemd/user.",
    ),
]
UnitDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--unit-dir",
        help="Write the units to this folder instead (e.g. for a package or another host).",
        show_default=False,
    ),
]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (scripts).")]
EveryOpt = Annotated[
    int | None,
    typer.Option(
        "--every",
        min=1,
        max=59,
        metavar="MINUTES",
        help="Fire every N minutes instead of on the jobs' schedules (like the crontab "
        "line; also checks alert_after between runs).",
        show_default=False,
    ),
]
HcbakOpt = Annotated[
    str | None,
    typer.Option(
        "--hcbak",
        metavar="PATH",
        help="The hcbak executable the units run (default: this hcbak, else the one on $PATH).",
        show_default=False,
    ),
]
UnitConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--unit-config",
        metavar="PATH",
        help="The config path the units pass to hcbak (default: the config read now).",
        show_default=False,
    ),
]


@dataclass(frozen=True)
class Units:
    """Everything `show` prints and `install` writes."""

    unit_dir: Path
    system: bool
    service: str
    timer: str
    crontab: str
    jobs: list[dict[str, Any]]
    unscheduled: list[str]
    every_minutes: int | None

    @property
    def service_path(self) -> Path:
        return self.unit_dir / SERVICE_NAME

    @property
    def timer_path(self) -> Path:
        return self.unit_dir / TIMER_NAME

    def files(self) -> list[tuple[Path, str]]:
        return [(self.service_path, self.service), (self.timer_path, self.timer)]


@app.command("show")
def show(
    system: SystemOpt = False,
    unit_dir: UnitDirOpt = None,
    every: EveryOpt = None,
    hcbak: HcbakOpt = None,
    unit_config: UnitConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Print the service + timer pair (and the crontab line) for the jobs' schedules."""
    units = _build(system, unit_dir, every, hcbak, unit_config)
    installed = _installed_state(units)
    if installed == "outdated":
        info(
            f"the installed units in {units.unit_dir} differ from these (a job or schedule "
            f"changed?): run `hcbak schedule install{_scope_args(units)}` again"
        )
    if json_out:
        emit_json({**_units_json(units), "installed": installed})
        return
    typer.echo(f"# {units.service_path}")
    typer.echo(units.service)
    typer.echo(f"# {units.timer_path}")
    typer.echo(units.timer)
    typer.echo("# Or, with cron instead (cron cannot catch up, so it ticks; `--due` decides):")
    typer.echo(units.crontab)
    typer.echo("")
    typer.echo(f"# To write and start the timer: hcbak schedule install{_scope_args(units)}")


@app.command("install")
def install(
    system: SystemOpt = False,
    unit_dir: UnitDirOpt = None,
    every: EveryOpt = None,
    hcbak: HcbakOpt = None,
    unit_config: UnitConfigOpt = None,
    yes: YesOpt = False,
    force: Annotated[
        bool, typer.Option("--force", help="Replace unit files that hcbak did not write.")
    ] = False,
    enable: Annotated[
        bool,
        typer.Option(
            "--enable", help="Also run systemctl daemon-reload and enable --now hcbak.timer."
        ),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Write hcbak.service and hcbak.timer (user units unless --system)."""
    from hcbak.cli.owned_files import check_writable, write_file

    units = _build(system, unit_dir, every, hcbak, unit_config)
    if system and unit_dir is None and not _is_root():
        raise UsageError("--system writes /etc/systemd/system: run as root")
    for path, _ in units.files():
        check_writable(path, MARKER, force=force)
    if not _confirmed(yes, f"Write {units.service_path} and {units.timer_path}?"):
        info("nothing written")
        return
    written = [{"path": str(p), "action": write_file(p, text)} for p, text in units.files()]
    enable_steps = _systemctl_steps(units.system, ["daemon-reload"], ["enable", "--now"])
    if enable:
        _run_systemctl(enable_steps)
    if json_out:
        emit_json(
            {
                "unit_dir": str(units.unit_dir),
                "files": written,
                "enable_command": _joined(enable_steps),
                "enabled": enable,
            }
        )
        return
    for item in written:
        typer.echo(f"{item['action']} {item['path']}")
    if enable:
        typer.echo(f"enabled: {_joined(enable_steps)}")
    else:
        typer.echo(f"To start the timer, run: {_joined(enable_steps)}")
    if not units.system:
        typer.echo(
            "A user timer runs only while you are logged in, unless lingering is on: "
            "loginctl enable-linger $USER (or install system units with --system as root)."
        )


@app.command("remove")
def remove(
    system: SystemOpt = False,
    unit_dir: UnitDirOpt = None,
    yes: YesOpt = False,
    disable: Annotated[
        bool,
        typer.Option(
            "--disable", help="First run systemctl disable --now hcbak.timer, then daemon-reload."
        ),
    ] = False,
    json_out: JsonOpt = False,
) -> int:
    """Remove the hcbak.service and hcbak.timer that `schedule install` wrote (only those)."""
    from hcbak.cli.owned_files import is_ours

    folder = _unit_dir(system, unit_dir)
    if system and unit_dir is None and not _is_root():
        raise UsageError("--system removes from /etc/systemd/system: run as root")
    paths = [folder / SERVICE_NAME, folder / TIMER_NAME]
    ours = [p for p in paths if is_ours(p, MARKER) and not p.is_symlink()]
    foreign = [p for p in paths if (p.exists() or p.is_symlink()) and p not in ours]
    disable_steps = _systemctl_steps(system, ["disable", "--now"], ["daemon-reload"])
    if ours and not _confirmed(yes, f"Remove {' and '.join(str(p) for p in ours)}?"):
        info("nothing removed")
        return int(ExitCode.OK)
    if ours and disable:
        _run_systemctl(disable_steps[:1])
    for path in ours:
        path.unlink()
    if ours and disable:
        _run_systemctl(disable_steps[1:])
    for path in foreign:
        warn(f"left {path}: it was not written by hcbak")
    if json_out:
        emit_json(
            {
                "unit_dir": str(folder),
                "removed": [str(p) for p in ours],
                "left": [str(p) for p in foreign],
                "disable_command": _joined(disable_steps),
                "disabled": bool(ours and disable),
            }
        )
    else:
        for path in ours:
            typer.echo(f"removed {path}")
        if not ours:
            typer.echo(f"nothing to remove in {folder}")
        elif not disable:
            typer.echo(f"If the timer was enabled, run: {_joined(disable_steps)}")
    return int(ExitCode.WARNINGS if foreign else ExitCode.OK)


# --- building -----------------------------------------------------------------------------
def _build(
    system: bool,
    unit_dir: Path | None,
    every: int | None,
    hcbak: str | None,
    unit_config: Path | None,
) -> Units:
    config = load_config()
    schedules = [(job.name, job.schedule) for job in config.jobs.values() if job.schedule]
    unscheduled = sorted(job.name for job in config.jobs.values() if not job.schedule)
    if not schedules and every is None:
        raise UsageError(
            f"no job in {config.path} has a schedule",
            hint="give one with `hcbak job edit NAME --schedule CRON`, or use --every MINUTES",
        )
    for name in unscheduled:
        info(f"job {name} has no schedule: the timer never runs it (`hcbak job run {name}`)")
    config_path = unit_config or Path(os.path.abspath(config.path))
    command = [*_hcbak_command(hcbak), "--config", str(config_path), "job", "run", "--due"]
    times = plan_times(schedules, DUE_ZONE)
    return Units(
        unit_dir=_unit_dir(system, unit_dir),
        system=system,
        service=service_unit(command, system=system),
        timer=timer_unit(times, every_minutes=every),
        crontab=crontab_line(command, every_minutes=every),
        jobs=[{"job": t.job, "cron": t.cron, "on_calendar": list(t.on_calendar)} for t in times],
        unscheduled=unscheduled,
        every_minutes=every,
    )


def _installed_state(units: Units) -> str:
    """What is in the unit folder now: `absent`, `current`, `outdated` (ours, but not
    what the config gives today) or `foreign` (a file hcbak did not write)."""
    from hcbak.cli.owned_files import is_ours

    present = [(p, text) for p, text in units.files() if p.exists() or p.is_symlink()]
    if not present:
        return "absent"
    if any(not is_ours(p, MARKER) or p.is_symlink() for p, _ in present):
        return "foreign"
    if len(present) == 2 and all(p.read_text(encoding="utf-8") == t for p, t in present):
        return "current"
    return "outdated"


def _units_json(units: Units) -> dict[str, Any]:
    return {
        "unit_dir": str(units.unit_dir),
        "service_path": str(units.service_path),
        "service": units.service,
        "timer_path": str(units.timer_path),
        "timer": units.timer,
        "crontab": units.crontab,
        "jobs": units.jobs,
        "unscheduled": units.unscheduled,
        "every_minutes": units.every_minutes,
        "enable_command": _joined(
            _systemctl_steps(units.system, ["daemon-reload"], ["enable", "--now"])
        ),
    }


def _hcbak_command(given: str | None) -> list[str]:
    """An absolute hcbak for ExecStart= (systemd needs one) and for cron's short PATH:
    the one running now when started as `hcbak`, else the one on $PATH."""
    if given:
        return [os.path.abspath(os.path.expanduser(given))]
    running = sys.argv[0] if sys.argv else ""
    if Path(running).name == "hcbak" and os.access(running, os.X_OK):
        return [os.path.abspath(running)]
    found = shutil.which("hcbak")
    if found:
        return [os.path.abspath(found)]
    return [sys.executable, "-m", "hcbak"]


def _unit_dir(system: bool, given: Path | None) -> Path:
    if given is not None:
        return Path(os.path.abspath(given.expanduser()))
    if system:
        return SYSTEM_UNIT_DIR
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "systemd" / "user"


def _scope_args(units: Units) -> str:
    args = " --system" if units.system else ""
    if units.every_minutes is not None:
        args += f" --every {units.every_minutes}"
    return args


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


# --- asking and systemctl -----------------------------------------------------------------
def _confirmed(yes: bool, question: str) -> bool:
    if yes:
        return True
    if not stdin_is_tty():
        raise UsageError("not a terminal, so nobody can confirm", hint="pass --yes")
    return typer.confirm(question, default=False)


def _systemctl_steps(system: bool, first: list[str], second: list[str]) -> list[list[str]]:
    """Two systemctl calls for the user or system manager; enable/disable name the timer."""
    scope = [] if system else ["--user"]

    def step(action: list[str]) -> list[str]:
        target = [TIMER_NAME] if action[0] in ("enable", "disable") else []
        return ["systemctl", *scope, *action, *target]

    return [step(first), step(second)]


def _joined(steps: list[list[str]]) -> str:
    return " && ".join(shlex.join(step) for step in steps)


def _run_systemctl(steps: list[list[str]]) -> None:
    """Run each step; the first failure is an error (exit 4) naming the command."""
    for step in steps:
        program = shutil.which(step[0])
        if program is None:
            raise HcbakError("systemctl not found: is this a systemd host?")
        proc = subprocess.run([program, *step[1:]], check=False)
        if proc.returncode != 0:
            raise HcbakError(f"`{shlex.join(step)}` exited {proc.returncode}")
