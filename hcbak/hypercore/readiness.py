"""Is a configured cluster ready for hcbak? (`hcbak cluster test`)

Every configured node is probed on its own (not through failover) so a node that is
down, hangs or presents the wrong certificate is named; then one logged-in client
checks roles, the worker VM, the VM count and the update status. A TLS mismatch on
any node makes the cluster "not ready": failover must never hide a certificate that
changed. An unreachable node alone is a warning, since failover covers it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from hcbak.errors import ClusterError, HcbakError, NotFoundError, TLSError
from hcbak.hypercore.client import HyperCoreClient
from hcbak.hypercore.failover import NodePool
from hcbak.hypercore.records import ClusterInfo
from hcbak.hypercore.roles import check_roles
from hcbak.secrets import Secret

if TYPE_CHECKING:
    from hcbak.hypercore.settings import ConnectionSettings


@dataclass
class NodeReport:
    address: str
    reachable: bool = False
    version: str = ""
    tls: str = ""
    tls_ok: bool = False
    error: str = ""


@dataclass
class Readiness:
    cluster: str
    nodes: list[NodeReport] = field(default_factory=list)
    login_ok: bool = False
    login_error: str = ""
    cluster_name: str = ""
    roles: list[str] = field(default_factory=list)
    roles_known: bool = False
    backup_ok: bool = False
    restore_ok: bool = False
    missing_backup: list[str] = field(default_factory=list)
    missing_restore: list[str] = field(default_factory=list)
    worker_vm: str | None = None
    worker_vm_uuid: str = ""
    worker_hint: str = ""
    vm_count: int | None = None
    update_idle: bool | None = None
    update_detail: str = ""
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return not self.reasons

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ready"] = self.ready
        return data


def check_cluster(
    cfg: ConnectionSettings,
    password: Secret,
    *,
    worker_vm: str | None = None,
    warn: Callable[[str], None] | None = None,
) -> Readiness:
    """Probe nodes, log in, and check everything a backup and a restore need
    (`worker_vm`: the VM hcbak reads disks on, as configured)."""
    report = Readiness(cluster=cfg.name, worker_vm=worker_vm)
    client = HyperCoreClient(cfg, password, warn=warn)
    try:
        try:
            client.login()
            report.login_ok = True
        except HcbakError as exc:
            report.login_error = exc.one_line()
        for address in cfg.nodes:
            report.nodes.append(_probe_node(cfg, address, client.pool.session_cookie))
        if report.login_ok:
            _check_account(client, cfg, report)
    finally:
        client.logout()
        client.close()
    _judge(report)
    return report


def _probe_node(cfg: ConnectionSettings, address: str, cookie: str | None) -> NodeReport:
    node = NodeReport(address)
    pool = NodePool(
        cfg.name,
        [address],
        cfg.tls,
        connect_timeout=cfg.connect_timeout,
        read_timeout=cfg.read_timeout,
        rounds=1,
    )
    pool.session_cookie = cookie
    node.tls = pool.trust[address].describe()
    try:
        resp = pool.send("GET", "/Cluster", idempotent=True, auth=cookie is not None)
        node.reachable = True
        node.tls_ok = True
        if resp.status_code == 200:
            items = resp.json()
            if isinstance(items, list) and items and isinstance(items[0], dict):
                node.version = ClusterInfo.from_api(items[0]).version
        else:
            node.error = f"GET /Cluster answered HTTP {resp.status_code}"
    except TLSError as exc:
        node.error = exc.message
    except ClusterError as exc:
        reason = pool.last_failures.get(address, "")
        node.tls_ok = not reason.startswith("TLS")
        node.error = reason or exc.one_line()
    except ValueError:
        node.error = "GET /Cluster answered a body that is not JSON"
    finally:
        pool.close()
    return node


def _check_account(client: HyperCoreClient, cfg: ConnectionSettings, report: Readiness) -> None:
    try:
        report.cluster_name = client.cluster_info().name
    except HcbakError as exc:
        report.warnings.append(f"cluster info: {exc.one_line()}")
    try:
        check = check_roles(client.roles())
        report.roles_known = True
        report.roles = check.roles
        report.backup_ok, report.restore_ok = check.backup_ok, check.restore_ok
        report.missing_backup, report.missing_restore = check.missing_backup, check.missing_restore
    except HcbakError as exc:
        report.warnings.append(f"roles could not be read: {exc.one_line()}")
    try:
        vms = client.list_vms()
        report.vm_count = len(vms)
    except HcbakError as exc:
        report.reasons.append(f"VMs could not be listed: {exc.one_line()}")
        vms = []
    if report.worker_vm:
        try:
            report.worker_vm_uuid = client.find_vm(report.worker_vm).uuid
        except NotFoundError:
            report.worker_hint = (
                f"no VM {report.worker_vm!r} on the cluster; set the worker with "
                f"`hcbak cluster add {cfg.name} ... --worker-vm NAME_OR_UUID`"
            )
        except HcbakError as exc:
            report.worker_hint = exc.one_line()
    else:
        report.worker_hint = (
            "no worker VM configured: hcbak reads disks on a Linux VM on the cluster; set it "
            f"with `hcbak cluster add {cfg.name} ... --worker-vm NAME_OR_UUID`"
        )
    status = client.update_status()
    report.update_idle, report.update_detail = status.idle, status.detail


def _judge(report: Readiness) -> None:
    """Turn the findings into reasons (not ready) and warnings (ready, but look)."""
    for node in report.nodes:
        if node.error and not node.tls_ok:
            report.reasons.append(f"node {node.address}: {node.error}")
        elif not node.reachable:
            report.warnings.append(f"node {node.address} unreachable: {node.error}")
    if not report.login_ok:
        report.reasons.append(f"login failed: {report.login_error}")
        return
    if report.roles_known and not report.backup_ok:
        report.reasons.append(
            "the account lacks roles needed for backup: " + ", ".join(report.missing_backup)
        )
    if report.roles_known and not report.restore_ok:
        report.warnings.append(
            "the account lacks roles needed for restore: " + ", ".join(report.missing_restore)
        )
    if not report.worker_vm_uuid:
        report.reasons.append(f"worker VM not found: {report.worker_hint}")
    if report.update_idle is False:
        report.warnings.append(
            f"cluster update status: {report.update_detail}; backups wait, then skip"
        )
