"""`hcbak cluster` commands."""

from __future__ import annotations

import typer

from hcbak.cli import cluster_test

app = typer.Typer(help="Manage HyperCore clusters in the config.", no_args_is_help=True)

cluster_test.register(app)
