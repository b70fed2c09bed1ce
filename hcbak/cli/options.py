"""Option types that several command modules share (one definition, one help text)."""

from typing import Annotated

import typer

# The --json option of every command that reports something.
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (stable keys, docs/cli.md).")]
