"""`hcbak job` commands."""

from __future__ import annotations

import typer

from hcbak.cli import job_run

app = typer.Typer(help="Manage and run backup jobs.", no_args_is_help=True)

job_run.register(app)
