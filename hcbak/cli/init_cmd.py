"""`hcbak init`: from nothing to a scheduled, verified backup, asked step by step.

The six steps of the issue (22), in order: this host, the cluster, the repository,
email, the job, then a first run and the scheduling lines. Every step ends in the real
commands (`cluster add`, `repo add`, `notify smtp`, `job create`, ...), printed as the
`hcbak ...` line a script would type, secrets only as references.

The commands work on an in-memory draft of the config (cli/draft.py); the file is
written once, atomically, when the user says so at the end. Ctrl-C at any question
before that leaves the file byte for byte as it was. Scripts never see a prompt:
without a terminal `hcbak init` exits 2 and points to the flag-by-flag commands.
"""

import importlib.util
import os
import platform
import shutil
import socket
from pathlib import Path
from typing import Annotated

import typer

from hcbak.cli.ask import ask, confirm, heading, say
from hcbak.cli.common import stdin_is_tty
from hcbak.cli.context import OPTIONS
from hcbak.cli.init_choices import (
    parse_choice,
    parse_email,
    parse_name,
    parse_port,
    secret_flags,
)
from hcbak.cli.init_cluster import check_secret, cluster_step, is_root
from hcbak.cli.init_session import INTERRUPTED, InitSession, Interrupted, Redo, unused_name
from hcbak.errors import UsageError

app = typer.Typer(add_completion=False)  # one command, built by the root app on use

FLAG_BY_FLAG = (
    "scripts use the flag-by-flag commands: hcbak cluster add, repo add, notify smtp, "
    "job create, schedule install; see docs/cli.md"
)


@app.command("init")
def init_command(
    install: Annotated[
        bool,
        typer.Option(
            "--install",
            help="At the end, also write the systemd timer (asks first; hcbak schedule install).",
        ),
    ] = False,
) -> None:
    """Set up hcbak step by step on a terminal: cluster, repository, email, job, first run.

    Each step runs the real command and prints it as a script would type it.
    The config is written once, at the end; Ctrl-C before that leaves it as it was.
    """
    if not stdin_is_tty():
        raise UsageError("hcbak init asks questions and needs a terminal", hint=FLAG_BY_FLAG)
    from hcbak.cli.draft import drafting
    from hcbak.config import default_config_path, load_config

    path = Path(OPTIONS.config_path or default_config_path()).expanduser()
    load_config(path, missing_ok=True)  # an invalid config stops here, not at the end
    original = path.read_bytes() if path.exists() else None
    shown = ["--config", str(OPTIONS.config_path)] if OPTIONS.config_path else []
    say(f"hcbak init: six steps to a scheduled backup. Nothing is written to {path}")
    say("until you confirm at the end; Ctrl-C at any question leaves it as it is.")
    try:
        with drafting(path, original.decode("utf-8") if original is not None else None) as d:
            session = InitSession(d, shown, [*shown, *(["--debug"] if OPTIONS.debug else [])])
            job = _steps(session)
        saved = _save(session, path, original)
    except (Interrupted, KeyboardInterrupt, typer.Abort):
        say("")
        say(f"Stopped: {path} is unchanged (nothing was saved).")
        raise typer.Exit(INTERRUPTED) from None
    if saved:
        _schedule(session, job, install)
    _recap(session)


def _steps(session: InitSession) -> str:
    """Steps 1 to 6 up to the save; the job's name."""
    device_root = session.attempt(1, requirements_step)
    cluster = session.attempt(2, lambda: cluster_step(session, device_root))
    repo = session.attempt(3, lambda: repository_step(session))
    email = session.attempt(4, lambda: email_step(session))
    job = session.attempt(5, lambda: job_step(session, cluster, repo, email))
    session.attempt(6, lambda: first_run_step(session, job))
    return job


# --- step 1 -----------------------------------------------------------------------------
def requirements_step() -> str:
    """What this host has and what is lost without it; the device root."""
    heading("Step 1 of 6: this host")
    say(f"  Python {platform.python_version()}: ok (3.11 or later)")
    fuse = os.path.exists("/dev/fuse") and importlib.util.find_spec("mfusepy") is not None
    say(
        "  FUSE: ok (hcbak mount can show a point's files)"
        if fuse
        else "  FUSE: missing; without it `hcbak mount` (browse a point's files) is unavailable"
        " (pip install 'hcbak[mount]' and libfuse); backups and restores work"
    )
    say(
        "  qemu-img: ok (restores to vmdk and vhdx)"
        if shutil.which("qemu-img")
        else "  qemu-img: missing; restores to vmdk/vhdx are unavailable (raw and qcow2 work)"
    )
    if not is_root():
        say("  not root: backups read attached disks as block devices; run them as root")
        say("  (or as a user in the disk group)")
    say("  Whether this host is a VM of the cluster is checked in step 2, after the login.")
    return ask("Folder where attached disks appear on this host", _device_root, default="/dev")


def _device_root(answer: str) -> str:
    path = Path(answer.strip()).expanduser().absolute()
    if not path.exists():
        raise ValueError(f"{path} does not exist")
    if not path.is_dir():
        raise ValueError(f"{path} is not a folder")
    if not os.access(path, os.R_OK | os.X_OK):
        raise ValueError(f"{path} is not readable by this user")
    return str(path)


# --- step 3 -----------------------------------------------------------------------------
def repository_step(session: InitSession) -> str:
    heading("Step 3 of 6: the repository")
    taken = session.config().repositories
    name = ask(
        "Repository name",
        lambda a: parse_name(a, "repository name", taken),
        default=unused_name("main", taken),
    )
    default = "/var/lib/hcbak/repo" if is_root() else str(Path.home() / "hcbak-repo")
    folder, existing = ask("Repository folder (local disk or NFS mount)", _repo_folder, default)
    if existing:
        say("  This folder holds an hcbak repository: it will be adopted as it is.")
        encrypt = confirm("Is it encrypted (does it need a passphrase)?", default=True)
    else:
        encrypt = confirm("Encrypt the backups (AES-256-GCM, needs a passphrase)?", True)
    argv = ["repo", "add", name, "--path", folder]
    if encrypt:
        say("  The passphrase is read at every run from where you say: it is never stored.")
        ref = ask("Passphrase source: env:VARIABLE, file:PATH (mode 0600) or cmd:COMMAND",
                  check_secret)  # fmt: skip
        say("  Keep a copy of the passphrase somewhere other than this host (a password")
        say("  manager, a safe): without it nothing in this repository can be restored,")
        say("  and nobody can recover it.")
        argv += ["--encrypt", *secret_flags("passphrase", ref)]
    if session.run(argv, edits_config=True) != 0:
        raise Redo
    return name


def _repo_folder(answer: str) -> tuple[str, bool]:
    """An absolute folder that is empty, absent (its parent writable) or a repository."""
    from hcbak.repo import is_repo

    path = Path(answer.strip()).expanduser().absolute()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{path} is a file, not a folder")
        if is_repo(path):
            return str(path), True
        if any(path.iterdir()):
            raise ValueError(f"{path} is not empty and not an hcbak repository")
        return str(path), False
    parent = next((p for p in path.parents if p.exists()), Path("/"))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"cannot create {path}: {parent} is not writable by this user")
    return str(path), False


# --- step 4 -----------------------------------------------------------------------------
def email_step(session: InitSession) -> str | None:
    """SMTP and a test message; the address reports go to, or None (skipped)."""
    from hcbak.cli.notify_smtp import DEFAULT_PORTS

    heading("Step 4 of 6: email reports")
    if not confirm("Send job reports by email?", default=True):
        say("  skipped: add it later with `hcbak notify smtp` and `hcbak job edit --notify-email`")
        return None
    host = ask("SMTP server (host name or address)", lambda a: a.strip())
    security = ask(
        "Security (starttls, ssl, none)",
        lambda a: parse_choice(a, ("starttls", "ssl", "none")),
        default="starttls",
    )
    port = ask("Port", parse_port, default=str(DEFAULT_PORTS[security]))
    sender = ask("Sender address", parse_email, default=f"hcbak@{socket.getfqdn() or 'localhost'}")
    to = ask("Send reports to", parse_email)
    username = ask("SMTP user name (empty: no login)", lambda a: a.strip(), allow_empty=True)
    argv = ["notify", "smtp", "--host", host, "--port", str(port), "--security", security]
    argv += ["--sender", sender]
    if username:
        ref = ask("Its password source: env:VARIABLE, file:PATH or cmd:COMMAND", check_secret)
        argv += ["--username", username, *secret_flags("password", ref)]
    if session.run(argv, edits_config=True) != 0:
        raise Redo
    if session.run(["notify", "test", "--to", to]) == 0:
        say(f"  Check that the test message reached {to}.")
        return to
    answer = ask(
        "The test message was not sent: [r]etry with other settings, [k]eep them, [s]kip email",
        lambda a: parse_choice(a, ("r", "k", "s")),
        default="r",
    )
    if answer == "r":
        raise Redo
    if answer == "s":
        session.undo_step()
        return None
    return to


# --- step 5 -----------------------------------------------------------------------------
def job_step(session: InitSession, cluster: str, repo: str, email: str | None) -> str:
    from hcbak.cli.init_job import ask_job, job_create_argv
    from hcbak.cli.job import JobOptions

    heading("Step 5 of 6: the backup job")
    config = session.config()
    name = ask(
        "Job name",
        lambda a: parse_name(a, "job name", config.jobs),
        default=unused_name("nightly", config.jobs),
    )
    opts = JobOptions(cluster=cluster, repo=repo, notify_email=[email] if email else None)
    ask_job(config.cluster(cluster), opts)
    if session.run(job_create_argv(name, opts), edits_config=True) != 0:
        raise Redo
    return name


# --- step 6 -----------------------------------------------------------------------------
def first_run_step(session: InitSession, job: str) -> None:
    heading("Step 6 of 6: a first backup, then the schedule")
    backup = confirm("Back up now (a first full backup, with the live view)?", default=True)
    if backup and session.run(["job", "run", job]) not in (0, 1):
        say("  The first run did not succeed (see above); the config is not saved yet.")
    scheduled = session.config().job(job).schedule
    if scheduled:
        say("Scheduling: a systemd timer (catches up missed runs) or one crontab line:")
        session.run(["schedule", "show"])
    else:
        say(f"  The job has no schedule: run it with `hcbak job run {job}`, or give it one")
        say(f"  with `hcbak job edit {job} --schedule CRON`.")


def _save(session: InitSession, path: Path, original: bytes | None) -> bool:
    """Write the draft to the config file, once, atomically (if the user says so)."""
    from hcbak.cli.common import save_config
    from hcbak.config import parse_config

    if not confirm(f"Write this config to {path}?", default=True):
        say(f"  Nothing written; {path} is unchanged. The commands below build the same config.")
        return False
    now = path.read_bytes() if path.exists() else None
    if now != original:
        raise UsageError(
            f"{path} changed while hcbak init ran; not overwritten",
            hint="the commands printed below build the same config",
        )
    if session.draft.text is not None:
        save_config(parse_config(session.draft.text, path))
    say(f"  Saved {path}.")
    return True


def _schedule(session: InitSession, job: str, install: bool) -> None:
    from hcbak.config import load_config

    if not load_config(session.draft.path).job(job).schedule:
        return
    if not install:
        say("To write the timer: hcbak schedule install (or add the crontab line: crontab -e).")
        return
    if confirm("Write the systemd timer and service now?", default=False):
        session.run(["schedule", "install", "--yes"])


def _recap(session: InitSession) -> None:
    lines = session.recap()
    if not lines:
        return
    say("")
    say("The same setup, for scripts (or another host):")
    for line in lines:
        say(f"  {line}")
