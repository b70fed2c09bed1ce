"""Step 2 of `hcbak init`: the cluster, its nodes, the login and the certificates to trust.

The nodes come from the first node's own `GET /Node` list (the user confirms them);
each certificate is shown as its SHA-256 fingerprint and pinned only after an explicit
yes (trust on first use, with a person looking). Then `hcbak cluster add` with
`--fingerprint` per node, `hcbak cluster test`, and `hcbak cluster probe` if wanted.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hcbak.cli.ask import ask, confirm, heading, say
from hcbak.cli.init_choices import (
    discovered_addresses,
    parse_name,
    parse_nodes,
    parse_secret_source,
    secret_flags,
)
from hcbak.cli.init_session import InitSession, Redo, unused_name
from hcbak.config import validate_node
from hcbak.errors import AuthError, ClusterError, HcbakError

if TYPE_CHECKING:
    from hcbak.config import ClusterConfig
    from hcbak.hypercore.records import VM
    from hcbak.secrets import SecretRef

DMI_UUID = Path("/sys/class/dmi/id/product_uuid")


@dataclass
class Login:
    """What the first node told us once logged in."""

    username: str
    password: SecretRef
    node_records: list[dict[str, Any]]
    vms: list[VM]


def cluster_step(session: InitSession, device_root: str) -> str:
    """Ask, add and test the cluster; its name."""
    heading("Step 2 of 6: the cluster")
    name = ask(
        "Cluster name",
        lambda a: parse_name(a, "cluster name", session.config().clusters),
        default=unused_name("prod", session.config().clusters),
    )
    first, first_fp = ask("Address of one node (host or host:port)", _reachable_node)
    _show_fingerprints({first: first_fp})
    if not confirm("Is this the certificate of that node? Trust it?", default=False):
        say("  not trusted: give the address again, or check it on the node's console")
        raise Redo
    login = _log_in(name, first, first_fp, device_root)
    nodes = discovered_addresses(first, login.node_records)
    say(f"  The cluster lists {len(nodes)} node(s): {', '.join(nodes)}")
    if not confirm("Use these node addresses?", default=True):
        nodes = ask("Node addresses (comma-separated)", parse_nodes, default=first)
    fingerprints = {first: first_fp, **_fetch_all([n for n in nodes if n != first])}
    nodes = [n for n in nodes if n in fingerprints]
    if len(fingerprints) > 1:
        _show_fingerprints({a: fp for a, fp in fingerprints.items() if a != first})
        if not confirm("Trust these certificates too?", default=False):
            raise Redo
    worker = _ask_worker(login.vms)
    argv = ["cluster", "add", name]
    for address in nodes:
        argv += ["--node", address]
    argv += ["--username", login.username, *secret_flags("password", login.password)]
    argv += ["--worker-vm", worker, "--device-root", device_root]
    for address in nodes:
        argv += ["--fingerprint", f"{address}={fingerprints[address]}"]
    if session.run(argv, edits_config=True) != 0:
        raise Redo
    _test(session, name)
    return name


def _test(session: InitSession, name: str) -> None:
    """`cluster test` (and `cluster probe` when asked), with their verdicts."""
    if session.run(["cluster", "test", name]) != 0:
        say("  The cluster is not ready for backups yet (the reasons are above).")
        if confirm("Change the cluster settings?", default=True):
            raise Redo
    say("`hcbak cluster probe` proves the whole data path with a small scratch VM:")
    say("  snapshot, change list, disk attached to this host and read, restore upload.")
    if not confirm("Run the probe now (about a minute on a real cluster)?", default=False):
        return
    if session.run(["cluster", "probe", name]) != 0 and confirm(
        "Change the cluster settings?", default=True
    ):
        raise Redo


def _fetch_all(addresses: list[str]) -> dict[str, str]:
    """Each node's fingerprint; a node that does not answer is left out, and said so
    (`hcbak cluster add --force` with every --node adds it later)."""
    found = {}
    for address in addresses:
        try:
            found[address] = _fetch(address)
        except HcbakError as exc:
            say(f"  left out {address}: {exc.one_line()}")
    return found


def _reachable_node(answer: str) -> tuple[str, str]:
    address = validate_node(answer.strip())
    return address, _fetch(address)


def _fetch(address: str) -> str:
    from hcbak.config import normalize_fingerprint
    from hcbak.hypercore.tls import fetch_fingerprint

    return normalize_fingerprint(fetch_fingerprint(address, 5.0))


def _show_fingerprints(fingerprints: dict[str, str]) -> None:
    say("  Certificate SHA-256 fingerprints (compare with the node's console or web UI):")
    for address, fp in fingerprints.items():
        say(f"    {address}  {fp}")


def _log_in(name: str, first: str, fp: str, device_root: str) -> Login:
    """Ask the user and password source until the first node accepts them."""
    while True:
        username = ask("HyperCore user name", lambda a: a.strip())
        password = ask(
            "Password source: env:VARIABLE, file:PATH (mode 0600) or cmd:COMMAND",
            check_secret,
        )
        cfg = _probe_config(name, first, fp, username, password, device_root)
        try:
            return _look_around(cfg, username, password)
        except AuthError as exc:
            say(f"  not accepted: {exc.message}; user and password source again")
        except ClusterError as exc:
            say(f"  the node did not answer the login: {exc.one_line()}")
            raise Redo from None


def _probe_config(
    name: str, first: str, fp: str, username: str, password: SecretRef, device_root: str
) -> ClusterConfig:
    from hcbak.config import ClusterConfig, TLSConfig

    return ClusterConfig(
        name=name,
        nodes=[first],
        username=username,
        password=password,
        tls=TLSConfig(fingerprints={first: fp}),
        device_root=device_root,
        retries=1,
    )


def _look_around(cfg: ClusterConfig, username: str, password: SecretRef) -> Login:
    from hcbak.cli.output import warn
    from hcbak.engine.connect import connection_settings
    from hcbak.hypercore.client import hypercore_session

    with hypercore_session(connection_settings(cfg), warn=warn) as client:
        records = client.records("/Node")
        vms = client.list_vms()
    return Login(username, password, records, vms)


def _ask_worker(vms: list[VM]) -> str:
    names = {vm.name for vm in vms}

    def check(answer: str) -> str:
        value = answer.strip()
        if value not in names and value not in {vm.uuid for vm in vms}:
            raise ValueError(f"no VM {value!r} on the cluster")
        return value

    found = this_host_vm(vms)
    if found:
        say(f"  This host is the cluster's VM {found!r}: it will be the worker.")
    else:
        say("  This host was not found among the cluster's VMs (by its DMI UUID or its")
        say("  host name); hcbak reads disks on a VM of the cluster: name that VM.")
    return ask("Worker VM (where snapshot disks are attached)", check, default=found)


def this_host_vm(vms: list[VM]) -> str | None:
    """The VM this host is: its DMI product UUID (root can read it), else its host name."""
    try:
        uuid = DMI_UUID.read_text(encoding="ascii").strip().lower()
    except (OSError, UnicodeDecodeError):
        uuid = ""
    for vm in vms:
        if uuid and vm.uuid.lower() == uuid:
            return vm.name
    host = socket.gethostname().split(".")[0].lower()
    for vm in vms:
        if vm.name.lower() == host:
            return vm.name
    return None


def check_secret(answer: str) -> SecretRef:
    """A reference that resolves now: the variable is set, the file is private and not
    empty, the command prints something (the same check `config check` makes)."""
    from hcbak.secrets import SecretRef, loose_file_warning

    ref = parse_secret_source(answer)
    if ref.file:
        path = Path(ref.file).expanduser().absolute()
        if path.is_file() and (message := loose_file_warning(path)):
            raise ValueError(message)
        ref = SecretRef(file=str(path))
    try:
        value = ref.resolve()
    except HcbakError as exc:
        raise ValueError(exc.one_line()) from None
    if not value.reveal():
        raise ValueError(f"{ref.describe()} is empty")
    return ref


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0
