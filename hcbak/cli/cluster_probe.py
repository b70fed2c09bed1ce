"""`hcbak cluster probe NAME`: prove the whole data path on a cluster (engine/probe.py)."""

import json
from pathlib import Path
from typing import Annotated

import typer

from hcbak.cli.common import load_config
from hcbak.cli.output import emit_json, print_table, warn
from hcbak.errors import ClusterError


def register(app: typer.Typer) -> None:
    """Add the `probe` command to the `cluster` group."""
    app.command(
        "probe", epilog="Exit codes: 0 every step passed, 2 config error, 4 a step failed."
    )(cluster_probe)


def cluster_probe(
    name: Annotated[str, typer.Argument(help="Cluster name from the config.")],
    keep: Annotated[
        bool, typer.Option("--keep", help="Keep the scratch VM and its snapshots if all passed.")
    ] = False,
    report: Annotated[
        Path | None,
        typer.Option("--report", help="Write a shareable JSON report (keys, types, timings)."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the steps as JSON.")] = False,
) -> None:
    """Prove backup and restore on this cluster with a scratch VM, in about a minute.

    Creates a small VM with a known pattern, snapshots it twice, asks snapDiff, clones
    a snapshot disk onto the worker VM, finds and reads the device, then removes it
    all and tries a restore upload. Run it on the worker VM.
    """
    from hcbak.config import state_dir
    from hcbak.engine.connect import connection_settings
    from hcbak.engine.probe import run_probe
    from hcbak.hypercore.client import hypercore_session

    config = load_config()
    cfg = config.cluster(name)
    with hypercore_session(connection_settings(cfg), warn=warn) as client:
        result = run_probe(client, cfg, state_dir(config), keep=keep)
    if report is not None:
        report.write_text(json.dumps(result.report(), indent=2, sort_keys=True) + "\n")
    if json_out:
        emit_json({"cluster": name, "ok": result.ok, "steps": [s.to_json() for s in result.steps]})
    else:
        rows = [
            (s.name, s.status, f"{s.seconds:.2f}" if s.status != "not run" else "", s.detail)
            for s in result.steps
        ]
        print_table(["STEP", "RESULT", "SECONDS", "DETAIL"], rows, title=f"probe of {name}")
        for s in result.steps:
            if s.status == "failed":
                warn(f"{s.name} failed: {s.error}")
                if s.fix:
                    warn(f"fix: {s.fix}")
    failed = result.failed
    if failed is not None:
        raise ClusterError(f"cluster {name}: probe step {failed.name!r} failed: {failed.error}")
