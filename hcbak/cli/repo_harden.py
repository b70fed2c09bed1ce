"""`hcbak repo harden PATH --backup-user USER [--lift]`: the operating system's half of an
append-only folder repository (hcbak/repo/harden.py does the work; run as root where the
folder's disk is)."""

import grp
import pwd
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from hcbak.cli.output import info, warn
from hcbak.errors import ExitCode, UsageError
from hcbak.repo.fsio import translate_os_errors

if TYPE_CHECKING:
    import typer

    from hcbak.repo.harden import HardenReport

NO_ATTRIBUTES_NOTE = (
    "the filesystem of {path} keeps no append-only/immutable attributes (chattr): sealed "
    "files are protected by ownership and the sticky bit only, and the backup user can "
    "still delete files it wrote until a later harden seals them"
)


def register(app: "typer.Typer") -> None:
    """Add `harden` to the `repo` group."""
    import typer

    @app.command("harden")
    def harden(
        path: Annotated[
            Path, typer.Argument(metavar="PATH", help="The repository folder (on this host).")
        ],
        backup_user: Annotated[
            str | None,
            typer.Option("--backup-user", help="The user hcbak backs up as (not root)."),
        ] = None,
        group: Annotated[
            str | None,
            typer.Option("--group", help="Its group that may read and add (default: its own)."),
        ] = None,
        lift: Annotated[
            bool,
            typer.Option(
                "--lift", help="Undo it for a maintenance run as root (forget, prune, repair)."
            ),
        ] = False,
    ) -> None:
        """Make a repository folder append-only for the backup user (run as root; again
        from a timer to seal new files).

        Folders become root's with the append-only attribute (chattr +a), committed
        files root's, read-only and immutable (chattr +i); only locks/ stays writable.
        Pair it with `append_only: true` in the backup host's config entry.
        """
        root = path.expanduser().resolve()
        with translate_os_errors(f"the attributes of {root}"):
            report, done = _run(root, backup_user, group, lift)
        info(done)
        for item in report.skipped:
            info(f"left for a later run: {item}")
        if not report.attributes and not lift:
            warn(NO_ATTRIBUTES_NOTE.format(path=root))
            raise typer.Exit(int(ExitCode.WARNINGS))


def _run(
    root: Path, backup_user: str | None, group: str | None, lift: bool
) -> tuple["HardenReport", str]:
    from hcbak.repo import harden as hardening

    if lift:
        if backup_user or group:
            raise UsageError("--lift takes no --backup-user or --group")
        report = hardening.lift(root)
        return report, f"lifted the protection of {root}: `hcbak repo harden` it after maintenance"
    report = hardening.harden(root, _group_of(backup_user, group))
    return report, (
        f"hardened {root}: {report.folders} folders, {report.sealed} files sealed, "
        f"{report.already_sealed} already sealed, {len(report.skipped)} left for later"
    )


def _group_of(user: str | None, group: str | None) -> int:
    """The group id the backup user reads and adds with; never root's."""
    if user is None:
        raise UsageError("give --backup-user USER (the user hcbak backs up as)")
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise UsageError(f"no user named {user!r} on this host")
    if entry.pw_uid == 0:
        raise UsageError("--backup-user must not be root: root can undo any protection")
    if group is None:
        gid = entry.pw_gid
    else:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise UsageError(f"no group named {group!r} on this host")
    if gid == 0:
        raise UsageError("the backup user's group must not be root's (gid 0)")
    return gid
