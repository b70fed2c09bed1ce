"""Option types that several command modules share (one definition, one help text)."""

from typing import Annotated

import typer

# The --json option of every command that reports something.
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (stable keys, docs/cli.md).")]

# A passphrase reference: never the passphrase itself on the command line.
PassEnv = Annotated[
    str | None, typer.Option(help="Read the passphrase from this environment variable.")
]
PassFile = Annotated[str | None, typer.Option(help="Read the passphrase from this file.")]
PassCmd = Annotated[
    str | None, typer.Option(help="Run this shell command; its stdout is the passphrase.")
]
