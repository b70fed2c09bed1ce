"""`hcbak cluster test`: readiness check of a configured cluster (filled by the client work)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the `test` command to the `cluster` group."""
