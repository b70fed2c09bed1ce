"""`hcbak sim`: run the built-in HyperCore simulator (demo, tests, development)."""

import json
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from hcbak.config import ClusterConfig, TLSConfig
    from hcbak.sim import Simulator

app = typer.Typer(
    help="Run the built-in SC//HyperCore simulator (HTTPS REST API on 127.0.0.1).",
    no_args_is_help=True,
)


@app.command()
def serve(
    state: Annotated[
        Path, typer.Option("--state", help="State directory (created; reused on restart).")
    ],
    nodes: Annotated[int, typer.Option("--nodes", min=1, max=16, help="Cluster nodes.")] = 3,
    port_base: Annotated[
        int | None,
        typer.Option("--port-base", help="Node i listens on PORT_BASE+i (default: free ports)."),
    ] = None,
    seed: Annotated[bool, typer.Option("--seed", help="Create sample VMs with data.")] = False,
    task_delay: Annotated[
        float, typer.Option("--task-delay", min=0.0, help="Seconds a task takes.")
    ] = 0.02,
    cluster_version: Annotated[
        str | None,
        typer.Option(
            "--cluster-version",
            help="icosVersion to report; 9.7.1 or later also serves the v2 quiesced snapshot.",
        ),
    ] = None,
) -> None:
    """Serve a simulated cluster until SIGINT/SIGTERM; prints how to connect to it."""
    from hcbak.sim import Simulator
    from hcbak.sim.seed import seed_demo

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with Simulator(state, nodes=nodes, task_delay=task_delay, port_base=port_base) as sim:
        if cluster_version:
            sim.set_cluster_version(cluster_version)
        if seed:
            seed_demo(sim)
        user, password = sim.admin
        buser, bpassword = sim.backup_user
        typer.echo("HyperCore simulator running")
        for url, fp in zip(sim.node_urls, sim.fingerprints, strict=True):
            typer.echo(f"  node  {url}  sha256 {fp}")
        typer.echo(f"  admin        {user} / {password}")
        typer.echo(f"  backup user  {buser} / {bpassword}")
        typer.echo(f"  control      X-Sim-Admin-Token: {sim.admin_token}")
        typer.echo(f"  worker VM    hcbak-worker ({sim.worker_vm_uuid})")
        typer.echo(f"  devices      {sim.device_root}")
        typer.echo("")
        typer.echo("Try:")
        typer.echo(f"  curl -k -u {user}:{password} {sim.node_urls[0]}/rest/v1/VirDomain")
        typer.echo(f"  export HCBAK_SIM_PASSWORD='{bpassword}'")
        pins = " ".join(
            f"--fingerprint {a}={fp}"
            for a, fp in zip(sim.node_addresses, sim.fingerprints, strict=True)
        )
        nodes_opt = " ".join(f"--node {a}" for a in sim.node_addresses)
        typer.echo(
            f"  hcbak cluster add sim {nodes_opt} --username {buser} "
            f"--password-env HCBAK_SIM_PASSWORD --worker-vm hcbak-worker "
            f"--device-root {sim.device_root} {pins}"
        )
        typer.echo("Press Ctrl-C to stop.", err=True)
        while not stop.wait(0.2):
            pass
    typer.echo("simulator stopped", err=True)


@app.command()
def shapes() -> None:
    """Print the simulator's own shape report (keys and JSON types of every resource)."""
    import tempfile

    from hcbak.cli.output import emit_json
    from hcbak.sim.own_shapes import simulator_report

    with tempfile.TemporaryDirectory(prefix="hcbak-shapes-") as tmp:
        emit_json(simulator_report(Path(tmp) / "sim"))


@app.command("check-shapes")
def check_shapes(
    report: Annotated[Path, typer.Argument(help="A shape report (JSON) from a real cluster.")],
    json_out: Annotated[
        bool, typer.Option("--json", help="Print JSON (stable keys, docs/cli.md).")
    ] = False,
) -> None:
    """List every difference between a cluster's shape report and the simulator.

    Exit 0: none; 1: differences (each one a simulator fix, or a fact to record).
    """
    import tempfile

    from hcbak.cli.output import emit_json
    from hcbak.errors import ExitCode, UsageError
    from hcbak.hypercore.shapes import compare, load_report
    from hcbak.sim.own_shapes import simulator_report

    try:
        field = load_report(report.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"cannot read shape report {report}: {exc}") from None
    with tempfile.TemporaryDirectory(prefix="hcbak-shapes-") as tmp:
        own = load_report(json.dumps(simulator_report(Path(tmp) / "sim")))
    differences = compare(field, own)
    if json_out:
        emit_json({"differences": differences, "resources": sorted(field)})
    else:
        for line in differences:
            typer.echo(line)
        typer.echo(f"{len(differences)} difference(s) over {len(field)} resource(s)", err=True)
    if differences:
        raise typer.Exit(int(ExitCode.WARNINGS))


# --- the config entry for a simulator (tests, benchmarks; the simulator knows no config) ---
def pinned_tls(sim: "Simulator") -> "TLSConfig":
    """TLS settings that pin every node's certificate (as `cluster add --fingerprint`)."""
    from hcbak.config import TLSConfig

    return TLSConfig(fingerprints=dict(zip(sim.node_addresses, sim.fingerprints, strict=True)))


def sim_cluster_config(
    sim: "Simulator", name: str, *, password_env: str, **overrides: Any
) -> "ClusterConfig":
    """The config entry an operator would write for this simulator: every node with
    its pinned certificate, the backup user (password read from `password_env`), the
    worker VM and the device folder. `overrides` set other fields (timeouts, ...)."""
    from hcbak.config import ClusterConfig
    from hcbak.secrets import SecretRef

    fields: dict[str, Any] = {
        "name": name,
        "nodes": list(sim.node_addresses),
        "username": sim.backup_user[0],
        "password": SecretRef(env=password_env),
        "tls": pinned_tls(sim),
        "worker_vm": "hcbak-worker",
        "device_root": str(sim.device_root),
    }
    return ClusterConfig(**{**fields, **overrides})
