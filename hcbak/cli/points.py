"""`hcbak points list|show|forget`: restore points across the configured repositories.

POINT is an id, a unique id prefix, `VM@latest` or `VM@YYYY-MM-DD`. Without --repo
every configured repository is searched; a POINT found in two is an error.
"""

from typing import Annotated, Any

import typer

from hcbak.cli.common import load_config
from hcbak.cli.options import JsonOpt
from hcbak.cli.output import emit_json, info, print_fields, print_table, warn
from hcbak.cli.repo_access import (
    find_point,
    open_configured,
    refuse_append_only,
    repos_to_search,
)
from hcbak.errors import ExitCode, HcbakError

app = typer.Typer(help="List, inspect and forget restore points.", no_args_is_help=True)

RepoOpt = Annotated[str | None, typer.Option("--repo", help="Only this repository.")]
PointArg = Annotated[
    str, typer.Argument(help="Point id, unique prefix, VM@latest or VM@YYYY-MM-DD.")
]


@app.command("list")
def list_(
    repo: RepoOpt = None,
    vm: Annotated[str | None, typer.Option("--vm", help="Only this VM (name or uuid).")] = None,
    job: Annotated[str | None, typer.Option("--job", help="Only this job.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """List restore points, oldest first."""
    config = load_config()
    rows: list[dict[str, Any]] = []
    damaged: list[dict[str, str]] = []
    skipped = False
    for cfg in repos_to_search(config, repo):
        try:
            with open_configured(cfg, lock=None) as r:
                found = [{**p.to_json(), "repo": cfg.name} for p in r.list_points(vm=vm, job=job)]
                rows += _with_retention(r.store, found)
                damaged += [
                    {"repo": cfg.name, "id": pid, "reason": why}
                    for pid, why in r.unreadable_points.items()
                ]
        except HcbakError as exc:
            if repo:
                raise
            skipped = True
            warn(f"repository {cfg.name}: {exc.one_line()}")
    for d in damaged:
        warn(f"repository {d['repo']}: {d['reason']} (left out; run `hcbak repo verify`)")
    if json_out:
        emit_json({"points": rows, "damaged": damaged})
    else:
        _print_points(rows)
    # Incomplete output is never exit 0: a damaged point is 6, an unreadable repository 1.
    if damaged or skipped:
        raise typer.Exit(int(ExitCode.INTEGRITY if damaged else ExitCode.WARNINGS))


def _with_retention(store: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`immutable_until` of each point of an Object Lock repository (S3 immutable_days):
    its manifest's retention, which the packs it needs were extended to at its commit."""
    if not getattr(store, "immutable_days", 0):
        return rows
    for row in rows:
        until = store.retained_until(f"points/{row['id']}")
        row["immutable_until"] = until.isoformat() if until is not None else None
    return rows


def _print_points(rows: list[dict[str, Any]]) -> None:
    locked = any("immutable_until" in p for p in rows)
    print_table(
        ["ID", "REPO", "JOB", "VM", "CREATED", "DISKS", "SIZE"]
        + (["IMMUTABLE UNTIL"] if locked else []),
        [
            [
                p["id"],
                p["repo"],
                p["job"],
                p["vm"],
                p["created"][:19],
                p["disks"],
                p["capacity"],
            ]
            + ([(p.get("immutable_until") or "-")[:19]] if locked else [])
            for p in rows
        ],
        whole=["ID"],
    )


@app.command("show")
def show(spec: PointArg, repo: RepoOpt = None, json_out: JsonOpt = False) -> None:
    """Details of one restore point: VM, snapshot, disks, stats."""
    config = load_config()
    cfg, pid, warnings = find_point(config, spec, repo)
    with open_configured(cfg, lock=None) as r:
        p = r.load_point(pid)
    disks = [
        {
            "uuid": d.uuid,
            "slot": d.slot,
            "type": d.type,
            "capacity": d.capacity,
            "block_size": d.block_size,
            "blocks": len(d.block_map),
            "stored_blocks": sum(1 for _ in d.block_map.ids()),
            "serial": d.serial,
            "incremental": d.incremental,
            "cbt_reason": d.cbt_reason,
        }
        for d in p.disks
    ]
    doc = {
        "id": p.id,
        "repo": cfg.name,
        "job": p.job,
        "cluster": p.cluster,
        "vm_uuid": p.vm_uuid,
        "vm": p.vm_name,
        "created": p.created.isoformat(),
        "snapshot_uuid": p.snapshot_uuid,
        "snapshot_label": p.snapshot_label,
        "consistency": p.consistency,
        "hcbak_version": p.hcbak_version,
        "stats": p.stats,
        "disks": disks,
        "vm_definition": p.vm,
    }
    if json_out:
        emit_json(doc)
    else:
        _print_point(doc, disks)
    if warnings:
        raise typer.Exit(int(ExitCode.WARNINGS))


def _print_point(doc: dict[str, Any], disks: list[dict[str, Any]]) -> None:
    print_fields(
        [
            (k.replace("_", " "), doc[k])
            for k in (
                "id",
                "repo",
                "job",
                "cluster",
                "vm",
                "vm_uuid",
                "created",
                "snapshot_uuid",
                "consistency",
            )
        ]
    )
    print_table(
        ["SLOT", "TYPE", "UUID", "CAPACITY", "STORED BLOCKS", "SERIAL", "INCREMENTAL"],
        [
            [
                d["slot"],
                d["type"],
                d["uuid"],
                d["capacity"],
                d["stored_blocks"],
                d["serial"],
                d["incremental"],
            ]
            for d in disks
        ],
    )


@app.command("forget")
def forget(spec: PointArg, repo: RepoOpt = None) -> None:
    """Forget one restore point (its data is freed by `hcbak repo prune`)."""
    config = load_config()
    cfg, pid, warnings = find_point(config, spec, repo)
    refuse_append_only(cfg, "points forget")
    from hcbak.repo.storage.locked import free_deleted

    with open_configured(cfg) as r:
        r.forget_points([pid])
        locked = free_deleted(r.store)  # Object Lock: the manifest is hidden, not freed
    info(f"forgot point {pid} in repository {cfg.name}; run `hcbak repo prune {cfg.name}`")
    if locked is not None and locked.line():
        info(str(locked.line()))
    if warnings:
        raise typer.Exit(int(ExitCode.WARNINGS))
