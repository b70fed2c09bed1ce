"""The command-line edge: Typer apps (one module per command group), all printing,
and the one place where exceptions become exit codes.

Modules that define Typer commands do not use `from __future__ import annotations`:
Typer resolves every parameter annotation when it builds a command, and with postponed
annotations that means evaluating each `Annotated[..., typer.Option(...)]` string anew.
Building the `job` group took 20 ms that way and 8 ms without, on every `job run`.
Their few annotations that name a TYPE_CHECKING import or a later class are quoted.
"""
