"""`hcbak restore` commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="restore commands.", no_args_is_help=True)
