"""`hcbak demo`: a guided end-to-end run against the built-in simulator."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def demo() -> None:
        """Run the main job end to end against the built-in HyperCore simulator."""
        typer.echo("hcbak demo: the simulator and backup engine are not built yet.")
