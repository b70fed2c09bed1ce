"""Open a repository entry of the config: one place for what every opener passes.

Why: the CLI's commands, a job's backup and its `prune: after_run`, and `repo copy`
each opened a configured repository by hand (its store, passphrase, pin, state dir),
and a new check added to one was missed by the others.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hcbak.config import RepoConfig
    from hcbak.repo import Repository
    from hcbak.secrets import Secret


def passphrase_of(cfg: RepoConfig) -> Secret | None:
    """The entry's passphrase (an env var, file or command is read now), or None."""
    return cfg.passphrase.resolve() if cfg.passphrase else None


def open_configured_repo(
    cfg: RepoConfig,
    *,
    lock: str | None,
    command: str | None,
    state_dir: Path | None,
    lock_wait: float = 0.0,
    read_only_ok: bool = False,
    passphrase: Secret | None = None,
) -> AbstractContextManager[Repository]:
    """`open_repo` for a config entry, pinned to it (`Expected.of`). `passphrase`:
    one the caller resolved already (a job resolves it once for backup and prune);
    otherwise the entry's is resolved here."""
    from hcbak.repo import open_repo
    from hcbak.repo.settings import Expected
    from hcbak.repo.storage import store_for

    return open_repo(
        store_for(cfg),
        passphrase=passphrase if passphrase is not None else passphrase_of(cfg),
        lock=lock,
        lock_wait=lock_wait,
        command=command,
        read_only_ok=read_only_ok,
        state_dir=state_dir,  # lease sightings (with a lock) and the index cache
        expect=Expected.of(cfg),
    )
