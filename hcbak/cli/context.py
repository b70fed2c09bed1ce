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
