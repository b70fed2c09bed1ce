"""`hcbak cluster add|list|show|remove`: HyperCore clusters in the config.

TLS trust is an explicit choice when adding a cluster: HyperCore nodes ship
self-signed certificates, so silently trusting "whatever answers" would make the
stored password available to anyone on the path.
"""

from pathlib import Path
from typing import Annotated, Any

import typer

from hcbak.cli import cluster_probe, cluster_test
from hcbak.cli.common import (
    check_name,
    check_value,
    load_config,
    load_config_for_edit,
    save_config,
    secret_ref_from_options,
    secret_ref_json,
    stdin_is_tty,
)
from hcbak.cli.options import JsonOpt
from hcbak.cli.output import emit_json, info, print_fields, print_table
from hcbak.config import (
    ClusterConfig,
    TLSConfig,
    ensure_unused,
    normalize_fingerprint,
    validate_node,
)
from hcbak.errors import UsageError

app = typer.Typer(
    help="Manage HyperCore clusters in the config (nodes, credentials, TLS trust).",
    no_args_is_help=True,
)

TLS_CHOICES = (
    "--fingerprint NODE=SHA256 (pin each node), --trust-on-first-use (fetch and pin "
    "what the nodes present now), --ca-file FILE, or --insecure"
)


@app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="Cluster name (letters, digits, - and _).")],
    node: Annotated[
        list[str],
        typer.Option("--node", "-n", help="Node address: host or host:port (repeat per node)."),
    ],
    username: Annotated[str, typer.Option("--username", "-u", help="HyperCore user name.")],
    password_env: Annotated[
        str | None,
        typer.Option(help="Read the password from this environment variable at run time."),
    ] = None,
    password_file: Annotated[
        str | None, typer.Option(help="Read the password from this file at run time.")
    ] = None,
    password_command: Annotated[
        str | None,
        typer.Option(help="Run this shell command at run time; its stdout is the password."),
    ] = None,
    worker_vm: Annotated[
        str | None,
        typer.Option(help="Name of the VM hcbak runs in (snapshot disks are attached to it)."),
    ] = None,
    device_root: Annotated[
        str, typer.Option(help="Where attached disks appear on the worker.")
    ] = "/dev",
    fingerprint: Annotated[
        list[str] | None,
        typer.Option(help="Pin a node's certificate: NODE=SHA256 (repeat per node)."),
    ] = None,
    trust_on_first_use: Annotated[
        bool,
        typer.Option(
            "--trust-on-first-use", help="Fetch each node's certificate fingerprint now and pin it."
        ),
    ] = False,
    ca_file: Annotated[
        str | None, typer.Option(help="Verify nodes against this CA bundle (PEM).")
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Do not verify certificates (test labs only).")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Replace a cluster of the same name.")
    ] = False,
) -> None:
    """Add a cluster: its node addresses, user, password source and TLS trust.

    The password is a reference (env var, file or command) or typed at a hidden prompt on a
    terminal; it is never accepted as an option value.
    """
    check_name(name, "cluster name")
    nodes = [check_value(validate_node, n, "--node") for n in node]
    if len(set(nodes)) != len(nodes):
        raise UsageError("--node: the same address is given twice")
    config = load_config_for_edit()
    if name in config.clusters and not force:
        raise UsageError(f"cluster {name!r} already exists", hint="use --force to replace it")
    password = secret_ref_from_options(
        "password", env=password_env, file=password_file, command=password_command, prompt=True
    )
    if password is None:
        raise UsageError(
            "no password source",
            hint="give --password-env VAR, --password-file FILE or --password-command CMD "
            "(or run on a terminal to be prompted)",
        )
    cluster = ClusterConfig(
        name=name,
        nodes=nodes,
        username=username,
        password=password,
        worker_vm=worker_vm,
        device_root=device_root,
    )
    cluster.tls = _tls_from_options(
        cluster, fingerprint or [], trust_on_first_use, ca_file, insecure
    )
    config.clusters[name] = cluster
    save_config(config)
    info(f"cluster {name!r} saved to {config.path}")


def _tls_from_options(
    cluster: ClusterConfig,
    fingerprints: list[str],
    tofu: bool,
    ca_file: str | None,
    insecure: bool,
) -> TLSConfig:
    tls = TLSConfig(ca_file=ca_file, insecure=insecure)
    for item in fingerprints:
        address, sep, value = item.rpartition("=")
        if not sep or not address:
            raise UsageError(f"--fingerprint {item!r}: expected NODE=SHA256")
        if address not in cluster.nodes:
            raise UsageError(f"--fingerprint: {address} is not one of the --node addresses")
        tls.fingerprints[address] = check_value(normalize_fingerprint, value, "--fingerprint")
    if insecure and (ca_file or fingerprints or tofu):
        raise UsageError("--insecure cannot be combined with other TLS options")
    if ca_file and not Path(ca_file).expanduser().is_file():
        raise UsageError(f"--ca-file: {ca_file} is not a file")
    if ca_file:
        _check_ca_file(str(Path(ca_file).expanduser()))
    if tofu:
        for address in cluster.nodes:
            if address not in tls.fingerprints:
                tls.fingerprints[address] = _fetch(address, cluster.connect_timeout)
                info(f"pinned {address}: sha256 {tls.fingerprints[address]}")
        return tls
    if tls.fingerprints or ca_file or insecure:
        return tls
    if not stdin_is_tty():
        raise UsageError("choose how to trust the nodes' TLS certificates", hint=TLS_CHOICES)
    # On a terminal, show what each node presents and let the operator decide.
    for address in cluster.nodes:
        tls.fingerprints[address] = _fetch(address, cluster.connect_timeout)
        typer.echo(f"{address}: sha256 {tls.fingerprints[address]}", err=True)
    if not typer.confirm("Trust these certificates?", default=False, err=True):
        raise UsageError("certificates not trusted; nothing saved", hint=TLS_CHOICES)
    return tls


def _check_ca_file(path: str) -> None:
    """Refuse a CA file Python cannot load now, not at the first backup."""
    from hcbak.errors import TLSError
    from hcbak.hypercore.connection import tls_context

    try:
        tls_context("ca", path)
    except TLSError as exc:
        raise UsageError(f"--ca-file: {exc.message}", hint=exc.hint)


def _fetch(address: str, timeout: float) -> str:
    from hcbak.hypercore.tls import fetch_fingerprint

    return normalize_fingerprint(fetch_fingerprint(address, timeout))


@app.command("list")
def list_(json_out: JsonOpt = False) -> None:
    """List the configured clusters."""
    config = load_config()
    clusters = [config.clusters[n] for n in sorted(config.clusters)]
    if json_out:
        emit_json({"clusters": [cluster_json(c) for c in clusters]})
        return
    print_table(
        ["NAME", "NODES", "USERNAME", "TLS", "WORKER_VM"],
        [
            [c.name, ",".join(c.nodes), c.username, tls_summary(c.tls), c.worker_vm]
            for c in clusters
        ],
    )


@app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="Cluster name.")], json_out: JsonOpt = False
) -> None:
    """Show one cluster's settings (the password source, never its value)."""
    cluster = load_config().cluster(name)
    if json_out:
        emit_json(cluster_json(cluster))
        return
    print_fields(
        [
            ("name", cluster.name),
            ("nodes", ", ".join(cluster.nodes)),
            ("username", cluster.username),
            ("password", cluster.password.describe()),
            ("tls", tls_summary(cluster.tls)),
            *[(f"  {a}", f"sha256 {fp}") for a, fp in sorted(cluster.tls.fingerprints.items())],
            ("worker_vm", cluster.worker_vm or "(not set)"),
            ("device_root", cluster.device_root),
            (
                "timeouts",
                f"connect {cluster.connect_timeout:g}s, read {cluster.read_timeout:g}s, "
                f"task {cluster.task_timeout:g}s, update_wait {cluster.update_wait:g}s",
            ),
            ("retries", cluster.retries),
        ]
    )


@app.command("remove")
def remove(name: Annotated[str, typer.Argument(help="Cluster name.")]) -> None:
    """Remove a cluster from the config (refused while a job uses it)."""
    config = load_config()
    config.cluster(name)
    ensure_unused(config, cluster=name)
    del config.clusters[name]
    save_config(config)
    info(f"cluster {name!r} removed")


def tls_summary(tls: TLSConfig) -> str:
    if tls.insecure:
        return "insecure (not verified)"
    parts = []
    if tls.fingerprints:
        parts.append(f"pinned ({len(tls.fingerprints)} node(s))")
    if tls.ca_file:
        parts.append(f"ca_file {tls.ca_file}")
    return ", ".join(parts) or "system CA store"


def cluster_json(c: ClusterConfig) -> dict[str, Any]:
    """Stable --json shape of a cluster (docs/cli.md)."""
    return {
        "name": c.name,
        "nodes": list(c.nodes),
        "username": c.username,
        "password": secret_ref_json(c.password),
        "tls": {
            "ca_file": c.tls.ca_file,
            "fingerprints": dict(sorted(c.tls.fingerprints.items())),
            "insecure": c.tls.insecure,
        },
        "worker_vm": c.worker_vm,
        "device_root": c.device_root,
        "timeouts": {
            "connect": c.connect_timeout,
            "read": c.read_timeout,
            "task": c.task_timeout,
            "update_wait": c.update_wait,
        },
        "retries": c.retries,
    }


cluster_test.register(app)
cluster_probe.register(app)
