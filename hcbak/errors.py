"""One error hierarchy for hcbak; every class carries its exit code.

Engine, repository and client code raise these; only the CLI edge turns them into a
one-line message on stderr and the process exit code (docs/exit-codes.md).
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """The exit-code contract. Scripts branch on these; never renumber."""

    OK = 0
    WARNINGS = 1
    USAGE = 2
    PARTIAL = 3
    FAILED = 4
    BUSY = 5
    INTEGRITY = 6
    INTERRUPTED = 130


class HcbakError(Exception):
    """Base of every error hcbak reports to the user (never shown with a traceback)."""

    exit_code: ExitCode = ExitCode.FAILED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message

    def one_line(self) -> str:
        text = self.message if not self.hint else f"{self.message} ({self.hint})"
        return " ".join(text.split())


# --- exit 2: the user asked for something malformed -----------------------------------
class UsageError(HcbakError):
    """Wrong arguments or option combinations not caught by the parser."""

    exit_code = ExitCode.USAGE


class ConfigError(UsageError):
    """The config file is missing, unparsable, invalid or unsafe."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        hint: str | None = None,
    ) -> None:
        where = ""
        if path:
            where = f"{path}:{line}: " if line else f"{path}: "
        super().__init__(where + message, hint=hint)
        self.path = path
        self.line = line


class AppendOnlyError(UsageError):
    """A command would delete or rewrite committed data in an append-only repository:
    it runs on a trusted host with write access instead (docs/operations.md)."""


class NotFoundError(UsageError):
    """A named object (cluster, repo, job, point, VM in a command) does not exist."""


class SecretError(ConfigError):
    """A secret reference (env var, file, command) could not be resolved."""


# --- exit 4: nothing could be done ------------------------------------------------------
class ClusterError(HcbakError):
    """The HyperCore cluster could not be used."""

    exit_code = ExitCode.FAILED


class ClusterUnreachableError(ClusterError):
    """No node of the cluster answered in time."""


class TLSError(ClusterError):
    """A node's certificate does not match what the config trusts."""


class AuthError(ClusterError):
    """The cluster refused the credentials or the account lacks a role."""


class APIError(ClusterError):
    """The cluster answered, but not as the API promises (4xx/5xx, bad shape)."""

    def __init__(self, message: str, *, status: int | None = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.status = status


class QuiesceRefusedError(APIError):
    """The cluster answered a snapshot request with `attemptQuiesce` with a 4xx: that
    request was not carried out, so a crash-consistent one can be asked for instead."""


class TaskFailedError(ClusterError):
    """A HyperCore task ended in ERROR/UNINITIALIZED or did not finish in time."""


class TaskTimeoutError(TaskFailedError):
    """A task did not finish in time: unlike a failed one, it may still make something."""


class ClusterBusyError(ClusterError):
    """The cluster is updating; the run waited and gave up."""


class RepoError(HcbakError):
    """The repository could not be opened or written."""

    exit_code = ExitCode.FAILED


class RepoLocationError(RepoError):
    """The folder given for a new repository cannot hold one (a file, not empty,
    already a repository): the command's mistake, so exit 2."""

    exit_code = ExitCode.USAGE


class NoSpaceError(RepoError):
    """The repository's filesystem is full (ENOSPC/EDQUOT)."""


class PassphraseError(RepoError):
    """Wrong passphrase, or none could be obtained, for an encrypted repository."""


class HookError(HcbakError):
    """A pre-job hook failed; the job is skipped."""


class TransportError(HcbakError):
    """Disk bytes could not be read from the worker or written to the cluster."""


# --- exit 5: someone else is using it ---------------------------------------------------
class LockedError(HcbakError):
    """A repository or job lock is held by another live process."""

    exit_code = ExitCode.BUSY


# --- exit 6: the repository is damaged ------------------------------------------------
class IntegrityError(HcbakError):
    """Data in the repository is missing or does not match its checksum."""

    exit_code = ExitCode.INTEGRITY


# --- exit 130 ---------------------------------------------------------------------------
class Interrupted(HcbakError):
    """Interrupted by the user (Ctrl-C / SIGINT / SIGTERM)."""

    exit_code = ExitCode.INTERRUPTED


def describe_os_error(exc: OSError) -> str:
    """`No space left on device: /path` rather than "internal error (OSError)": for an
    OSError that reaches the CLI edge or ends a job."""
    what = exc.strerror or type(exc).__name__
    return f"{what}: {exc.filename}" if exc.filename else what
