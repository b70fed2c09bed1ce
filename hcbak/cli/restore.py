"""`hcbak restore vm` and `hcbak restore disk`: the operator's edge of the engine's
restore_vm.py and restore_disk.py.

Finding the point: POINT is resolved by the repository (`resolve_point`: id, unique
prefix, VM@latest, VM@YYYY-MM-DD). With --repo only that repository is searched;
otherwise every configured one, and a POINT that matches in more than one is an error
rather than a guess. The repository stays open with a shared lock for the whole
restore, so a prune cannot remove the point's blocks under it.
"""

import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, BinaryIO

import typer

from hcbak.cli.byte_bars import byte_bars
from hcbak.cli.common import load_config
from hcbak.cli.options import JsonOpt
from hcbak.cli.output import emit_json, info, is_tty, print_fields, warn
from hcbak.cli.repo_access import opened_point
from hcbak.errors import ExitCode, UsageError

if TYPE_CHECKING:
    from rich.progress import TaskID

    from hcbak.config import ClusterConfig, Config
    from hcbak.engine.point_reader import Progress
    from hcbak.engine.restore_vm import VmResult
    from hcbak.repo import Point

app = typer.Typer(
    help="Restore a VM to a cluster, or a disk to a file or stdout.", no_args_is_help=True
)

PointArg = Annotated[
    str,
    typer.Argument(metavar="POINT", help="Point id, unique id prefix, VM@latest or VM@YYYY-MM-DD."),
]
RepoOpt = Annotated[
    str | None,
    typer.Option("--repo", help="Repository name (default: search all configured ones)."),
]


@app.command("vm")
def vm_command(
    point_spec: PointArg,
    as_name: Annotated[
        str | None, typer.Option("--as", help="Name of the restored VM (default: original).")
    ] = None,
    cluster: Annotated[
        str | None,
        typer.Option("--cluster", help="Target cluster (default: the point's cluster)."),
    ] = None,
    power_on: Annotated[bool, typer.Option("--power-on", help="Start the VM afterwards.")] = False,
    network_map: Annotated[
        list[str] | None,
        typer.Option(
            "--network-map", help="Move NICs from VLAN OLD to VLAN NEW (OLD=NEW, repeatable)."
        ),
    ] = None,
    keep_macs: Annotated[
        bool, typer.Option("--keep-macs", help="Keep the NICs' MAC addresses (default: new).")
    ] = False,
    replace: Annotated[
        bool,
        typer.Option(
            "--replace",
            help="Replace the VM of that name: it is shut down and renamed "
            "<name>-replaced-<timestamp>, never deleted.",
        ),
    ] = False,
    repo: RepoOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Create a VM from a restore point and stream its disks to the cluster."""
    from hcbak.engine.connect import connection_settings
    from hcbak.engine.restore_vm import VmOptions, restore_vm
    from hcbak.hypercore import hypercore_session

    options = VmOptions(
        name=as_name,
        power_on=power_on,
        network_map=parse_network_map(network_map or []),
        keep_macs=keep_macs,
        replace=replace,
    )
    config = load_config()
    warnings: list[str] = []
    with ExitStack() as stack:
        repository, point = stack.enter_context(opened_point(config, point_spec, repo, warnings))
        cluster_cfg = _target_cluster(config, cluster, point)
        client = stack.enter_context(hypercore_session(connection_settings(cluster_cfg), warn=warn))
        progress = stack.enter_context(_progress(json_out))
        info(f"restoring point {point.id[:12]} ({point.vm_name}) to cluster {cluster_cfg.name}")
        result = restore_vm(repository, point, client, options, progress)
    for disk in result.not_restored:
        if "CDROM" in disk:  # a CD-ROM never has data: expected, not a warning
            info(f"not restored (no data in the point): {disk}")
            continue
        warnings.append(f"not restored (no data in the point): {disk}")
        warn(warnings[-1])
    if json_out:
        emit_json(result.to_dict())
    else:
        _print_vm_result(result, replace)
    if warnings:
        raise typer.Exit(int(ExitCode.WARNINGS))


def _print_vm_result(result: "VmResult", replace: bool) -> None:
    print_fields(
        [
            ("vm", result.vm_name),
            ("uuid", result.vm_uuid),
            ("point", result.point_id),
            ("disks", len(result.disks)),
            ("powered on", "yes" if result.powered_on else "no"),
            ("replaced", f"{result.replaced_name} ({result.replaced_uuid})" if replace else "-"),
            ("seconds", f"{result.seconds:.1f}"),
        ]
    )


@app.command("disk")
def disk_command(
    point_spec: PointArg,
    disk: Annotated[str, typer.Option("--disk", help="Disk slot number or uuid (prefix).")],
    to: Annotated[str, typer.Option("--to", help="Output file, or - for raw on stdout.")],
    fmt: Annotated[
        str, typer.Option("--format", help="raw (sparse), qcow2, vmdk or vhdx.")
    ] = "raw",
    repo: RepoOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Write one disk of a restore point to a file (no cluster needed)."""
    from hcbak.engine.restore_disk import FORMATS, check_destination, restore_disk

    if fmt not in FORMATS:
        raise UsageError(f"unknown --format {fmt!r}", hint="use raw, qcow2, vmdk or vhdx")
    if to == "-" and json_out:
        raise UsageError("--json cannot be combined with --to - (stdout carries the disk)")
    if to == "-" and is_tty(sys.stdout):
        raise UsageError("refusing to write a disk image to a terminal", hint="pipe or redirect it")
    if to != "-":
        check_destination(Path(to))
    config = load_config()
    warnings: list[str] = []
    with ExitStack() as stack:
        repository, point = stack.enter_context(opened_point(config, point_spec, repo, warnings))
        progress = stack.enter_context(_progress(json_out or to == "-"))
        dest: BinaryIO | Path = sys.stdout.buffer if to == "-" else Path(to)
        result = restore_disk(repository, point, disk, dest, fmt, progress)
    if json_out:
        emit_json({"point_id": point.id, **result.to_dict()})
    elif to != "-":
        print_fields(
            [
                ("point", point.id),
                ("disk", f"slot {result.slot} {result.type} {result.uuid}"),
                ("to", f"{result.destination} ({result.format})"),
                ("capacity", result.capacity),
                ("data bytes", result.bytes_written),
                ("seconds", f"{result.seconds:.1f}"),
            ]
        )
    if warnings:
        raise typer.Exit(int(ExitCode.WARNINGS))


def parse_network_map(items: list[str]) -> dict[int, int]:
    """`OLD=NEW` VLAN pairs -> {old: new}; each OLD once."""
    mapping: dict[int, int] = {}
    for item in items:
        old, sep, new = item.partition("=")
        if not sep or not old.strip().isdigit() or not new.strip().isdigit():
            raise UsageError(f"--network-map {item!r}: expected OLD_VLAN=NEW_VLAN, e.g. 10=20")
        if int(old) in mapping:
            raise UsageError(f"--network-map: VLAN {old} is mapped twice")
        mapping[int(old)] = int(new)
    return mapping


def _target_cluster(config: "Config", name: str | None, point: "Point") -> "ClusterConfig":
    if name:
        return config.cluster(name)
    if point.cluster in config.clusters:
        return config.cluster(point.cluster)
    if len(config.clusters) == 1:
        return next(iter(config.clusters.values()))
    raise UsageError(
        f"the point's cluster {point.cluster!r} is not configured",
        hint="choose the target with --cluster",
    )


@contextmanager
def _progress(quiet: bool) -> "Iterator[Progress]":
    """Per-disk progress on stderr: a bar on a TTY, start/finish lines otherwise."""
    if quiet:
        yield lambda label, done, total: None
        return
    if is_tty(sys.stderr):
        bars: dict[str, TaskID] = {}
        with byte_bars() as rich_progress:

            def update(label: str, done: int, total: int) -> None:
                if label not in bars:
                    bars[label] = rich_progress.add_task(label, total=total)
                rich_progress.update(bars[label], completed=done)

            yield update
        return
    seen: set[str] = set()

    def lines(label: str, done: int, total: int) -> None:
        if label not in seen:
            seen.add(label)
            info(f"{label}: restoring {total} bytes")
        if done >= total and label + ":done" not in seen:
            seen.add(label + ":done")
            info(f"{label}: done")

    yield lines
