"""`hcbak cluster test NAME`: is this cluster ready for backups and restores?"""

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from hcbak.cli.common import load_config
from hcbak.cli.output import emit_json, print_fields, print_table, warn
from hcbak.errors import ClusterError

if TYPE_CHECKING:
    from hcbak.hypercore.readiness import Readiness


def register(app: typer.Typer) -> None:
    """Add the `test` command to the `cluster` group."""
    app.command("test", epilog="Exit codes: 0 ready, 2 config error, 4 not ready.")(cluster_test)


def cluster_test(
    name: Annotated[str, typer.Argument(help="Cluster name from the config.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check a cluster: nodes (version, TLS), login, roles, worker VM, VMs, updates.

    Exits 0 when the cluster is ready for backups, 4 when not (the reason is printed).
    """
    cfg = load_config().cluster(name)
    password = cfg.password.resolve()
    from hcbak.engine.connect import connection_settings
    from hcbak.hypercore.readiness import check_cluster  # requests is slow to import

    report = check_cluster(connection_settings(cfg), password, worker_vm=cfg.worker_vm, warn=warn)
    if json_out:
        emit_json(_nulls(report.to_json()))
    else:
        _print_report(report)
    if not report.ready:
        raise ClusterError(f"cluster {name} is not ready: " + "; ".join(report.reasons))


def _print_report(report: "Readiness") -> None:
    rows = [
        (n.address, "yes" if n.reachable else "no", n.version or "-", n.tls, n.error or "")
        for n in report.nodes
    ]
    print_table(["NODE", "REACHABLE", "VERSION", "TLS", "PROBLEM"], rows, title=report.cluster)
    roles = ", ".join(report.roles) if report.roles_known else "unknown"
    print_fields(
        [
            ("cluster", report.cluster_name or report.cluster),
            ("login", "ok" if report.login_ok else f"FAILED: {report.login_error}"),
            ("roles", roles),
            ("backup roles", _yes_no(report.backup_ok, report.missing_backup, report)),
            ("restore roles", _yes_no(report.restore_ok, report.missing_restore, report)),
            ("worker VM", _worker(report)),
            ("VMs", report.vm_count if report.vm_count is not None else "unknown"),
            ("update", report.update_detail or "unknown"),
            ("ready", "yes" if report.ready else "no"),
        ]
    )
    for message in report.warnings:
        warn(message)
    sys.stdout.flush()


def _nulls(value: Any) -> Any:
    """The report with "" (not known, not checked) as null, as docs/cli.md promises."""
    if isinstance(value, dict):
        return {k: _nulls(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nulls(v) for v in value]
    return None if value == "" else value


def _worker(report: "Readiness") -> str:
    if report.worker_vm_uuid:
        return f"{report.worker_vm} ({report.worker_vm_uuid})"
    if not report.login_ok:
        return "not checked (login failed)"
    return f"NOT FOUND ({report.worker_hint})"


def _yes_no(ok: bool, missing: list[str], report: "Readiness") -> str:
    if not report.roles_known:
        return "unknown"
    return "sufficient" if ok else "missing " + ", ".join(missing)
