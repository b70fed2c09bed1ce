"""`hcbak repo add|list|show|remove|passwd|unlock|forget|prune|verify|repair`.

The repository folder is the source of truth for its format (block size, compression);
the config names it, says where it is and how to get the passphrase, and pins what it
must be: its id (recorded by `repo add`) and encrypted or not (it has a passphrase).
"""

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperCommand

from hcbak.cli import repo_add
from hcbak.cli.common import (
    load_config,
    load_config_for_edit,
    save_config,
    secret_ref_from_options,
    secret_ref_json,
)
from hcbak.cli.options import JsonOpt, PassCmd, PassEnv, PassFile
from hcbak.cli.output import emit_json, info, print_fields, print_table
from hcbak.cli.repo_access import (
    lease_state_dir,
    open_configured,
    refuse_append_only,
)
from hcbak.config import (
    Config,
    RepoConfig,
    ensure_unused,
    format_block_size,
    jobs_using,
    state_dir,
)
from hcbak.errors import ExitCode, HcbakError, IntegrityError, UsageError

if TYPE_CHECKING:
    from typer._click import Context  # typer vendors click without public aliases

app = typer.Typer(
    help="Manage backup repositories: create, inspect, verify, forget, prune and repair.",
    no_args_is_help=True,
)
repo_add.register(app)  # first in `repo --help`; its own module (folders and S3)

NameArg = Annotated[str, typer.Argument(help="Repository name in the config.")]


@app.command("list")
def list_(json_out: JsonOpt = False) -> None:
    """List configured repositories."""
    config = load_config()
    rows = [_entry_json(config, r) for r in config.repositories.values()]
    if json_out:
        emit_json({"repositories": rows})
        return
    print_table(
        ["NAME", "PATH", "ENCRYPTED", "COMPRESSION", "BLOCK SIZE", "JOBS"],
        [
            [
                r["name"],
                r["path"],
                "yes" if r["encrypted"] else "no",
                r["compression"],
                format_block_size(r["block_size"]),
                ",".join(r["jobs"]),
            ]
            for r in rows
        ],
    )


def _entry_json(config: Config, r: RepoConfig) -> dict[str, Any]:
    return {
        "name": r.name,
        "path": r.path,
        "encrypted": r.passphrase is not None,
        "passphrase": secret_ref_json(r.passphrase),
        "compression": r.compression,
        "block_size": r.block_size,
        "append_only": r.append_only,
        "jobs": jobs_using(config, repo=r.name),
    }


@app.command("show")
def show(name: NameArg, json_out: JsonOpt = False) -> None:
    """Size, points, blocks, dedup and compression ratios, locks and the last verify."""
    from hcbak.repo.locks import lock_report
    from hcbak.repo.stats import repo_stats

    config = load_config()
    cfg = config.repo(name)
    with open_configured(cfg, lock=None) as repo:
        stats = repo_stats(repo)
        locks = lock_report(repo.store, state_dir=lease_state_dir())
        doc = {
            **_entry_json(config, cfg),
            "repo_id": repo.config.repo_id,
            "format_version": repo.config.version,
            "created": repo.config.created,
            **stats,
            "locks": locks,
            "last_verify": _last_verify(config, repo.config.repo_id),
        }
    if json_out:
        emit_json(doc)
        return
    from hcbak.engine.report import human_bytes

    lv = doc["last_verify"]
    print_fields(
        [
            ("name", doc["name"]),
            ("path", doc["path"]),
            ("repository id", doc["repo_id"]),
            ("encrypted", "yes" if doc["encrypted"] else "no"),
            ("compression", doc["compression"]),
            ("block size", format_block_size(doc["block_size"])),
            ("points", doc["points"]),
            ("blocks", doc["blocks"]),
            ("packs", doc["packs"]),
            ("size", human_bytes(doc["size"])),
            ("dedup ratio", doc["dedup_ratio"]),
            ("compression ratio", doc["compression_ratio"]),
            ("locks", _count_locks(locks)),
            ("last verify", f"{lv['time']} {'ok' if lv['ok'] else 'FAILED'}" if lv else "never"),
        ]
    )


def _count_locks(locks: list[dict[str, Any]]) -> str:
    """`2`, or `2 (1 stale: ...)`: dead and stale locks block nobody."""
    stale = sum(1 for lk in locks if lk["stale"])
    return (
        f"{len(locks)} ({stale} stale: `hcbak repo unlock` removes them)"
        if stale
        else str(len(locks))
    )


@app.command("remove")
def remove(name: NameArg) -> None:
    """Remove a repository from the config (its folder is left untouched)."""
    config = load_config_for_edit()
    config.repo(name)
    ensure_unused(config, repo=name)
    del config.repositories[name]
    save_config(config)
    info(f"removed repository {name} from the config (its files are untouched)")


@app.command("passwd")
def passwd(
    name: NameArg,
    passphrase_env: PassEnv = None,
    passphrase_file: PassFile = None,
    passphrase_command: PassCmd = None,
) -> None:
    """Change the passphrase: rewraps the master key only, no data is rewritten."""
    from hcbak.repo.opening import set_passphrase

    config = load_config_for_edit()
    cfg = config.repo(name)
    if cfg.passphrase is None:
        raise UsageError(f"repository {name!r} is not encrypted")
    refuse_append_only(cfg, "repo passwd")
    ref = secret_ref_from_options(
        "passphrase",
        env=passphrase_env,
        file=passphrase_file,
        command=passphrase_command,
        prompt=True,
    )
    if ref is None:
        raise UsageError("give the new passphrase with --passphrase-env/-file/-command")
    from hcbak.repo.settings import Expected
    from hcbak.repo.storage import store_for

    set_passphrase(store_for(cfg), cfg.passphrase.resolve(), ref.resolve(), Expected.of(cfg))
    cfg.passphrase = ref
    save_config(config)
    info(f"passphrase of repository {name} changed")


@app.command("unlock")
def unlock(
    name: NameArg,
    force: Annotated[bool, typer.Option(help="Remove live locks too (dangerous).")] = False,
) -> None:
    """Remove stale locks (holders gone); with --force, every lock.

    A lock is stale when its holder died on this machine, or when this host has seen its
    file unchanged for 30 minutes (its holder renews it every minute)."""
    from hcbak.repo.locks import STALE_AFTER
    from hcbak.repo.locks import unlock as _unlock

    cfg = load_config().repo(name)
    from hcbak.repo.storage import store_for

    removed, kept = _unlock(store_for(cfg), force=force, state_dir=lease_state_dir())
    for lk in removed:
        info(f"removed {lk.describe()}")
    for lk, seen in kept:
        info(
            f"kept {lk.describe()} (this host has seen it unchanged for {seen:.0f} s; it is "
            f"stale after {STALE_AFTER:.0f} s: run unlock again then, or --force if you know "
            "its holder is gone)"
        )
    if not removed:
        info("no lock removed")


def _forget_plan(config: Config, repo: Any, name: str) -> list[dict[str, Any]]:
    from hcbak.repo.retention import select

    plan = []
    for job_name in jobs_using(config, repo=name):
        job = config.job(job_name)
        points = repo.list_points(job=job_name)
        for p, keep, reasons in select(points, job.retention, datetime.now(UTC)):
            plan.append({**p.to_json(), "keep": keep, "reasons": reasons})
    return plan


def _print_plan(plan: list[dict[str, Any]]) -> None:
    print_table(
        ["ID", "JOB", "VM", "CREATED", "ACTION", "REASONS"],
        [
            [
                p["id"],
                p["job"],
                p["vm"],
                p["created"][:19],
                "keep" if p["keep"] else "forget",
                ", ".join(p["reasons"]),
            ]
            for p in plan
        ],
        whole=["ID"],
    )


@app.command("forget")
def forget(
    name: NameArg,
    dry_run: Annotated[bool, typer.Option(help="Show what would be forgotten and why.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Forget points beyond each job's retention policy (data is freed by prune)."""
    config = load_config()
    if not dry_run:
        refuse_append_only(config.repo(name), "repo forget")
    from hcbak.repo.storage.locked import free_deleted

    locked = None
    with open_configured(config.repo(name)) as repo:
        plan = _forget_plan(config, repo, name)
        if not dry_run:
            repo.forget_points([p["id"] for p in plan if not p["keep"]])
            locked = free_deleted(repo.store)  # Object Lock: what stays, and until when
    if locked is not None and locked.line():
        info(str(locked.line()))
    if json_out:
        emit_json({"dry_run": dry_run, "points": plan, **(locked.to_json() if locked else {})})
    else:
        _print_plan(plan)


@app.command("prune")
def prune(
    name: NameArg,
    dry_run: Annotated[bool, typer.Option(help="Show what would be deleted.")] = False,
    wait: Annotated[float, typer.Option(help="Seconds to wait for other locks.")] = 0.0,
    json_out: JsonOpt = False,
) -> None:
    """Forget per retention policy, then delete unreferenced data (exclusive lock).

    Refuses (exit 6, nothing forgotten or deleted) when an index segment, manifest,
    damaged-copy record or pack table cannot be read: `hcbak repo repair` first.
    """
    from hcbak.repo.prune import PruneRefusedError, unreadable_metadata
    from hcbak.repo.prune import prune as _prune

    config = load_config()
    if not dry_run:
        refuse_append_only(config.repo(name), "repo prune")
    with open_configured(config.repo(name), lock="exclusive", wait=wait) as repo:
        try:
            problems = unreadable_metadata(repo)
            if problems:
                raise PruneRefusedError(problems)
            plan = _forget_plan(config, repo, name)
            if not dry_run:
                repo.forget_points([p["id"] for p in plan if not p["keep"]])
            report = _prune(repo, dry_run=dry_run, progress=info)
        except PruneRefusedError as exc:
            for problem in exc.problems:
                info(f"problem: {problem}")
            raise PruneRefusedError(exc.problems, name) from None
    for pack in report.packs_kept:
        info(
            f"kept pack {pack}: in no index yet holds referenced blocks, or its table is "
            f"unreadable (`hcbak repo repair {name}` indexes what it can)"
        )
    locked_line = report.locked.line() if report.locked is not None else None
    if locked_line:
        info(locked_line)
    doc = {**report.to_json(), "forgotten": [p["id"] for p in plan if not p["keep"]]}
    if json_out:
        emit_json(doc)
    else:
        print_fields(
            [
                (k.replace("_", " "), v if not isinstance(v, list) else len(v))
                for k, v in doc.items()
            ]
        )


@app.command("repair")
def repair(
    name: NameArg,
    dry_run: Annotated[
        bool, typer.Option(help="Read everything and report; write and delete nothing.")
    ] = False,
    salvage: Annotated[
        bool,
        typer.Option(
            help="Rewrite each point with lost blocks so they read as zeros (marked in "
            "the point); its original is forgotten."
        ),
    ] = False,
    wait: Annotated[float, typer.Option(help="Seconds to wait for other locks.")] = 0.0,
    json_out: JsonOpt = False,
) -> None:
    """Rebuild the index from the packs, set damaged blobs aside, report each point.

    Reads every pack (exclusive lock). Never deletes a pack. Exit 6 when some point
    still has lost blocks: the next backup of its VM may heal them, or --salvage.
    """
    from hcbak.repo.repair import repair as _repair

    config = load_config()
    if not dry_run:
        refuse_append_only(config.repo(name), "repo repair" + (" --salvage" if salvage else ""))
    with open_configured(
        config.repo(name), lock="exclusive", wait=wait, command="hcbak repo repair"
    ) as repo:
        report = _repair(repo, dry_run=dry_run, salvage=salvage, progress=info)
    if json_out:
        emit_json(report.to_json())
    else:
        for pack in report.packs_walked:
            info(f"pack {pack}: blob table unreadable, walked frame by frame")
        for copy in report.damaged_found:
            info(f"damaged: block {copy.id.hex()} in pack {copy.pack} (set aside)")
        for health in report.points:
            where = f"point {health.id} ({health.vm_name} {health.created})"
            if health.unreadable:
                info(f"{where}: manifest unreadable: {health.unreadable}")
            elif health.salvaged_as:
                info(f"{where}: salvaged as {health.salvaged_as}, lost blocks read as zeros")
            elif health.lost:
                lost = ", ".join(f"disk {d}: {len(b)} blocks" for d, b in health.lost.items())
                info(f"{where}: lost {lost}")
            else:
                info(f"{where}: whole")
        print_fields(
            [
                ("dry run", report.dry_run),
                ("packs", report.packs),
                ("blobs indexed", report.blobs_indexed),
                ("damaged copies", len(report.damaged_found)),
                ("segments written", report.segments_written),
                ("segments removed", report.segments_removed),
                ("points", len(report.points)),
                ("points with losses", len(report.lost_points)),
            ]
        )
    if report.lost_points:
        raise IntegrityError(
            f"repository {name}: {len(report.lost_points)} point(s) have lost blocks or an "
            "unreadable manifest: " + ", ".join(p.id[:12] for p in report.lost_points),
            hint="a backup of their VMs stores healthy blocks again; "
            f"`hcbak repo repair {name} --salvage` makes them restorable with zeros",
        )


_PERCENT_LIKE = re.compile(r"^-?[\d.]+%?$")


def _percent(text: str) -> float:
    """The --read-data value: 0..100, a trailing % allowed."""
    try:
        value = float(text.removesuffix("%"))
    except ValueError:
        value = -1.0
    if not 0 <= value <= 100:  # NaN fails this too
        raise typer.BadParameter(f"{text!r} is not a percentage from 0 to 100")
    return value


class _VerifyCommand(TyperCommand):
    """`--read-data` alone means 100%. Typer options cannot have an optional value,
    so a bare one (not followed by a number) gets its 100 here, before parsing."""

    def parse_args(self, ctx: "Context", args: list[str]) -> list[str]:
        return super().parse_args(ctx, _bare_read_data(args))


def _bare_read_data(args: list[str]) -> list[str]:
    out: list[str] = []
    for i, arg in enumerate(args):
        if arg == "--":
            return out + args[i:]
        following = args[i + 1] if i + 1 < len(args) else ""
        bare = arg == "--read-data" and not _PERCENT_LIKE.match(following)
        out.append("--read-data=100" if bare else arg)
    return out


@app.command("verify", cls=_VerifyCommand)
def verify(
    name: NameArg,
    read_data: Annotated[
        float | None,
        typer.Option(
            "--read-data",
            parser=_percent,
            metavar="[PERCENT]",
            help="Also read, decrypt and re-hash this share of the packs (0-100; alone: 100).",
            show_default=False,
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Check the structure; with --read-data, also read, decrypt and re-hash packs.

    Exit 6 when anything is wrong.
    """
    from hcbak.cli.output import warn
    from hcbak.repo.immutability import underprotected
    from hcbak.repo.verify import verify as _verify

    percent = read_data or 0.0
    config = load_config()
    with open_configured(config.repo(name), read_only_ok=True) as repo:
        report = _verify(repo, read_data_percent=percent, progress=info)
        _save_last_verify(config, repo.config.repo_id, report.ok, percent)
        weaker = underprotected(repo) if report.ok else []  # S3 Object Lock promises
    for line in weaker:
        warn(f"less protected than promised: {line}")
    if json_out:
        emit_json({**report.to_json(), "underprotected": weaker})
    else:
        for err in report.errors:
            info(f"problem: {err}")
        print_fields(
            [
                ("points", report.points),
                ("packs", report.packs),
                ("blobs", report.blobs),
                ("packs read", report.packs_read),
                ("blobs read", report.blobs_read),
                ("problems", len(report.errors)),
                ("affected points", " ".join(report.affected_points) or "none"),
            ]
        )
    if not report.ok:
        raise IntegrityError(
            f"repository {name} has {len(report.errors)} problem(s); affected points: "
            + (", ".join(p[:12] for p in report.affected_points) or "none"),
        )
    if weaker:  # the data is whole; its protection is not what was promised
        raise typer.Exit(int(ExitCode.WARNINGS))


def _verify_file(config: Config, repo_id: str) -> Path:
    return state_dir(config) / "verify" / f"{repo_id}.json"


def _save_last_verify(config: Config, repo_id: str, ok: bool, percent: float) -> None:
    from hcbak import fsio

    path = _verify_file(config, repo_id)
    try:
        fsio.make_private_dir(path.parent, parents=True)
        doc = {
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "ok": ok,
            "read_data_percent": percent,
        }
        fsio.write_atomic(path, json.dumps(doc).encode())
    except (OSError, HcbakError):
        pass  # informational only


def _last_verify(config: Config, repo_id: str) -> dict[str, Any] | None:
    try:
        doc: dict[str, Any] = json.loads(_verify_file(config, repo_id).read_text())
        return doc
    except (OSError, ValueError):
        return None


# `repo copy` lives in its own module (issue 20).
from hcbak.cli import repo_copy, repo_harden  # noqa: E402

repo_copy.register(app)
repo_harden.register(app)
