"""Secrets and references to them.

A `Secret` never shows its value in repr/str (tracebacks, logs, --debug); code that
needs the value calls `reveal()` at the last moment. Config files hold `SecretRef`s:
an environment variable, a file, or a command whose stdout is the secret.

A secret file that other local users may read is used, with a warning (once per file
and process): refusing would stop every backup for a mode bit, saying nothing would
leave a repository passphrase readable by anyone on the host.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hcbak.errors import SecretError

log = logging.getLogger("hcbak.secrets")


def _log_warning(message: str) -> None:
    log.warning("%s", message)


# Where the loose-file warning goes: the CLI points it at its `warning:` lines on stderr
# (hcbak/cli/context.py); library users get a log record.
warning_sink: Callable[[str], None] = _log_warning
_warned: set[str] = set()


class Secret:
    """A string that redacts itself everywhere except `reveal()`."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True)
class SecretRef:
    """Where a secret comes from. Exactly one source should be set."""

    env: str | None = None
    file: str | None = None
    command: str | None = None
    value: Secret | None = field(default=None, repr=False)

    def describe(self) -> str:
        if self.env:
            return f"environment variable {self.env}"
        if self.file:
            return f"file {self.file}"
        if self.command:
            return "command (password_command)"
        if self.value is not None:
            return "inline value"
        return "nothing"

    def is_inline(self) -> bool:
        return self.value is not None

    def resolve(self) -> Secret:
        if self.value is not None:
            return self.value
        if self.env:
            val = os.environ.get(self.env)
            if not val:
                raise SecretError(f"environment variable {self.env} is not set or empty")
            return Secret(_utf8_only(val, f"environment variable {self.env}"))
        if self.file:
            return Secret(_read_secret_file(Path(self.file).expanduser()))
        if self.command:
            return Secret(_run_secret_command(self.command))
        raise SecretError("no secret source configured")


def _utf8_only(value: str, source: str) -> str:
    """Passphrases are keyed as UTF-8 (docs/format.md): bytes that are not UTF-8 reach
    Python as surrogates, which no key derivation can take."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise SecretError(f"{source} is not UTF-8 text")
    return value


def _read_secret_file(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SecretError(f"secret file {path} does not exist")
    except PermissionError:
        raise SecretError(f"secret file {path} is not readable (permission denied)")
    except OSError as exc:
        raise SecretError(f"secret file {path} could not be read: {exc.strerror}")
    except UnicodeDecodeError:
        raise SecretError(f"secret file {path} is not UTF-8 text")
    value = text.rstrip("\r\n")
    if not value:
        raise SecretError(f"secret file {path} is empty")
    _warn_if_readable_by_others(path)
    return value


def loose_file_warning(path: Path) -> str | None:
    """The warning for a secret file that group or other may read, else None."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return None
    if not mode & 0o077:
        return None
    return (
        f"secret file {path} is readable by other users (mode {mode:04o}); run `chmod 600 {path}`"
    )


def _warn_if_readable_by_others(path: Path) -> None:
    message = loose_file_warning(path)
    if message is None or str(path) in _warned:
        return
    _warned.add(str(path))
    warning_sink(message)


def _run_secret_command(command: str) -> str:
    import subprocess  # only passphrase commands need it; `job run` starts faster without

    try:
        proc = subprocess.run(command, shell=True, capture_output=True, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        raise SecretError("secret command did not finish within 60 s")
    if proc.returncode != 0:
        raise SecretError(f"secret command exited with status {proc.returncode}")
    try:
        text = proc.stdout.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretError("secret command printed something that is not UTF-8 text")
    # universal newlines, as text mode (and a passphrase file) read them
    value = text.replace("\r\n", "\n").replace("\r", "\n").rstrip("\n")
    if not value:
        raise SecretError("secret command printed nothing")
    return value
