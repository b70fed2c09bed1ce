"""Global options shared by every command (set by the root callback)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class GlobalOptions:
    """Options of the root command that every subcommand needs."""

    config_path: Path | None = None
    debug: bool = False


OPTIONS = GlobalOptions()


def show_secret_warnings() -> None:
    """A secret file readable by others is a `warning:` line on stderr (cron mail),
    not only a log record nobody reads."""
    from hcbak import secrets
    from hcbak.cli.output import warn

    secrets.warning_sink = warn


def apply_root_options(config: Path | None, debug: bool) -> None:
    """What `hcbak [--config P] [--debug]` sets up, whichever way the command runs."""
    show_secret_warnings()
    OPTIONS.config_path = config
    OPTIONS.debug = debug
    if debug:
        import logging

        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(name)s %(message)s")
