"""`hcbak job run`: the backup session (filled by the engine work)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the `run` command to the `job` group."""
