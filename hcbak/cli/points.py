"""`hcbak points` commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="points commands.", no_args_is_help=True)
