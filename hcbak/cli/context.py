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


def apply_root_options(config: Path | None, debug: bool) -> None:
    """What `hcbak [--config P] [--debug]` sets up, whichever way the command runs."""
    OPTIONS.config_path = config
    OPTIONS.debug = debug
    if debug:
        import logging

        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(name)s %(message)s")
