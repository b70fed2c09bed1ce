"""Opening configured repositories and finding restore points, for every command.

`repo`, `points`, `restore` and `mount` all open a repository by its config entry
and resolve POINT the same way; this is that one place, so command modules never
import each other's internals.

POINT is resolved by the repository (`resolve_point`: id, unique prefix, VM@latest,
VM@YYYY-MM-DD). With --repo only that repository is searched; otherwise every
configured one, and a POINT that matches in more than one is an error rather than a
guess.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from hcbak.cli.common import load_config
from hcbak.cli.output import warn
from hcbak.errors import HcbakError, NotFoundError, UsageError

if TYPE_CHECKING:
    from hcbak.config import Config, RepoConfig
    from hcbak.repo import Point, Repository

READ_ONLY_NOTE = (
    "reading repository {path} without a lock ({why}). A read-only copy or snapshot "
    "cannot change underneath; but if this is a read-only view of a repository that "
    "others write, a prune there cannot see this reader and may delete blocks it is "
    "reading: a block found missing then fails this command (exit 4 or 6), wrong data "
    "is never returned"
)


def lease_state_dir() -> Path | None:
    """The state dir whose lease observations this host shares (docs/format.md, Locks)."""
    from hcbak.config import state_dir

    try:
        return state_dir(load_config())
    except HcbakError:
        return None


@contextmanager
def open_configured(
    cfg: RepoConfig,
    lock: str | None = "shared",
    wait: float = 0.0,
    command: str | None = "hcbak repo",
    read_only_ok: bool = False,
) -> Iterator[Repository]:
    """Open a configured repository. `read_only_ok` (commands that only read): where no
    lock file can be written, read without one and warn what that gives up."""
    from hcbak.engine.repo_open import open_configured_repo

    with open_configured_repo(
        cfg,
        lock=lock,
        lock_wait=wait,
        command=command,
        read_only_ok=read_only_ok,
        state_dir=lease_state_dir(),
    ) as repo:
        if repo.unlocked_reason:
            warn(READ_ONLY_NOTE.format(path=cfg.path, why=repo.unlocked_reason))
        yield repo


def refuse_append_only(cfg: RepoConfig, command: str) -> None:
    """Exit 2 before opening anything when `command` would delete or rewrite data in an
    append-only repository entry: it runs on a trusted host with write access."""
    from hcbak.errors import AppendOnlyError
    from hcbak.repo.storage.local import APPEND_ONLY_HINT

    if cfg.append_only:
        raise AppendOnlyError(
            f"repository {cfg.name} is append-only on this host: `hcbak {command}` deletes "
            "or rewrites its data",
            hint=APPEND_ONLY_HINT,
        )


def repos_to_search(config: Config, name: str | None) -> list[RepoConfig]:
    """The repository --repo names, else every configured one."""
    repos = [config.repo(name)] if name else list(config.repositories.values())
    if not repos:
        raise NotFoundError("no repository is configured", hint="add one with `hcbak repo add`")
    return repos


def find_point(config: Config, spec: str, repo: str | None) -> tuple[RepoConfig, str, list[str]]:
    """(repository, point id, warnings) for POINT, searching every configured
    repository unless --repo names one.

    A repository that cannot be opened is a warning when others are searched, the
    error itself when it is the only one. A `VM@...` spec is resolved among the points
    that can be read; damaged manifests are named in the warnings, as the newest point
    of that VM may be among them.
    """
    candidates = repos_to_search(config, repo)
    found: list[tuple[RepoConfig, str]] = []
    warnings: list[str] = []
    for cfg in candidates:
        try:
            with open_configured(cfg, lock=None) as r:
                try:
                    found.append((cfg, r.resolve_point(spec)))
                finally:
                    warnings += [
                        f"repository {cfg.name}: {why}" for why in r.unreadable_points.values()
                    ]
        except NotFoundError:
            continue
        except HcbakError as exc:
            if len(candidates) == 1:
                raise  # nothing else to search: the real reason is the answer
            warnings.append(f"repository {cfg.name}: {exc.one_line()}")
    for line in warnings:
        warn(line)
    if not found:
        where = f"repository {repo}" if repo else "any configured repository"
        raise NotFoundError(f"no restore point {spec!r} in {where}")
    if len(found) > 1:
        names = ", ".join(f"{r.name} ({pid[:12]})" for r, pid in found)
        raise UsageError(
            f"point {spec!r} exists in several repositories: {names}", hint="choose one with --repo"
        )
    return found[0][0], found[0][1], warnings


@contextmanager
def opened_point(
    config: Config, spec: str, repo_name: str | None, warnings: list[str] | None = None
) -> Iterator[tuple[Repository, Point]]:
    """Open the repository holding POINT (shared lock; none on a read-only repository,
    with a warning) and load the point; what was warned about on the way (a repository
    skipped, damaged points) goes to `warnings`."""
    repo_cfg, point_id, found_warnings = find_point(config, spec, repo_name)
    if warnings is not None:
        warnings += found_warnings
    # command=None: the lock names this command from argv (`hcbak restore disk`).
    with open_configured(repo_cfg, lock="shared", command=None, read_only_ok=True) as repository:
        yield repository, repository.load_point(point_id)
