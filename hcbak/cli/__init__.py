"""The command-line edge: Typer apps (one module per command group), all printing,
and the one place where exceptions become exit codes."""
