"""`hcbak repo` commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="repo commands.", no_args_is_help=True)
