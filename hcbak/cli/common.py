"""Helpers every command module shares: config loading/saving and option parsing.

Command modules stay thin: they turn options into config objects with these helpers,
and raise `UsageError`s (exit 2) for values the parser cannot check by itself.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from hcbak.cli import draft
from hcbak.cli.context import OPTIONS
from hcbak.errors import UsageError

if TYPE_CHECKING:
    from hcbak.config import Config
    from hcbak.secrets import SecretRef


V = TypeVar("V")
T = TypeVar("T")


def load_config() -> Config:
    """Load the config named by --config / $HCBAK_CONFIG / the default path (or the
    draft `hcbak init` is building, cli/draft.py)."""
    from hcbak.config import load_config as _load

    if (open_draft := draft.active()) is not None:
        return open_draft.load(missing_ok=False)
    return _load(OPTIONS.config_path)


def load_config_for_edit() -> Config:
    """Like `load_config`, but a missing file is an empty config (commands that add
    things create it on save)."""
    from hcbak.config import load_config as _load

    if (open_draft := draft.active()) is not None:
        return open_draft.load(missing_ok=True)
    return _load(OPTIONS.config_path, missing_ok=True)


def save_config(config: Config) -> None:
    """Validate the edited config exactly as the loader would, then save it atomically.

    Re-parsing the serialized text guarantees a command never writes a file that the
    next command refuses to load. While `hcbak init` runs, the save lands in its draft
    (cli/draft.py) and the file is written once, at the end.
    """
    import yaml

    from hcbak.config import config_to_dict, parse_config
    from hcbak.config import save_config as _save

    text = yaml.safe_dump(config_to_dict(config), sort_keys=False)
    parse_config(text, config.path)
    if (open_draft := draft.active()) is not None:
        open_draft.store(text)
        return
    _save(config)


def check_name(name: str, kind: str) -> str:
    """Reject names that cannot become file and lock names (exit 2)."""
    from hcbak.config import validate_name

    try:
        return validate_name(name, kind)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def check_value(fn: Callable[[V], T], value: V, option: str) -> T:
    """Run a config validator on an option value; ValueError becomes exit 2."""
    try:
        return fn(value)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None


def stdin_is_tty() -> bool:
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


def secret_ref_from_options(
    what: str,
    *,
    env: str | None,
    file: str | None,
    command: str | None,
    prompt: bool,
) -> SecretRef | None:
    """A SecretRef from exactly one of the --X-env/--X-file/--X-command options.

    Secret values are never accepted as option values (they would sit in argv and shell
    history); with none given, a TTY gets a hidden prompt (the value is stored inline in
    the 0600 config), anything else gets None.
    """
    from hcbak.secrets import Secret, SecretRef

    given = [v for v in (env, file, command) if v]
    if len(given) > 1:
        raise UsageError(f"give only one of --{what}-env, --{what}-file, --{what}-command")
    if env:
        return SecretRef(env=env)
    if file:
        return SecretRef(file=file)
    if command:
        return SecretRef(command=command)
    if prompt and stdin_is_tty():
        import typer

        value = typer.prompt(f"{what.capitalize()}", hide_input=True, confirmation_prompt=True)
        if not value:
            raise UsageError(f"empty {what}")
        return SecretRef(value=Secret(value))
    return None


def secret_ref_json(ref: SecretRef | None) -> dict[str, str | None] | None:
    """Where a secret comes from, for --json output (never the value itself)."""
    if ref is None:
        return None
    if ref.env:
        return {"source": "env", "ref": ref.env}
    if ref.file:
        return {"source": "file", "ref": ref.file}
    if ref.command:
        return {"source": "command", "ref": ref.command}
    return {"source": "inline", "ref": None}
