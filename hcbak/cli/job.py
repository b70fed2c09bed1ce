"""`hcbak job create|list|show|edit|remove` (and `job run`, registered by job_run).

`create` and `edit` share one set of options; `edit` changes only the options given.
Passing an empty string to a text option (`--schedule ""`) clears it; a list option
given on `edit` replaces the whole list.
"""

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Annotated, Any

import typer

from hcbak.cli import job_run
from hcbak.cli.common import (
    check_name,
    check_value,
    load_config,
    load_config_for_edit,
    stdin_is_tty,
)
from hcbak.cli.common import save_config as save_checked
from hcbak.cli.options import JsonOpt
from hcbak.cli.output import emit_json, info, print_fields, print_table
from hcbak.config import (
    NOTIFY_EVENTS,
    PRUNE_MODES,
    RETENTION_KEYS,
    Config,
    EmailNotify,
    JobConfig,
    Retention,
    validate_disk_filter,
)
from hcbak.errors import UsageError
from hcbak.schedule import CronSchedule, parse_duration

app = typer.Typer(help="Manage and run backup jobs.", no_args_is_help=True)

NameArg = Annotated[str, typer.Argument(help="Job name (letters, digits, - and _).")]
CLUSTER_HELP = "Cluster to back up from (cluster list)."
REPO_HELP = "Repository to store into (repo list)."
ClusterOpt = Annotated[str | None, typer.Option(help=CLUSTER_HELP)]
RepoOpt = Annotated[str | None, typer.Option(help=REPO_HELP)]
VmOpt = Annotated[list[str] | None, typer.Option("--vm", help="VM name to back up (repeat).")]
TagOpt = Annotated[
    list[str] | None, typer.Option("--tag", help="Back up every VM with this tag (repeat).")
]
ExcludeOpt = Annotated[
    list[str] | None, typer.Option("--exclude", help="VM name to leave out (repeat).")
]
DiskOpt = Annotated[
    list[str] | None,
    typer.Option("--disk", help="Only these disks: slot number or disk type (repeat)."),
]
# The keep_* options, once for `create` and `edit` (the RETENTION_KEYS of the config).
KeepLastOpt = Annotated[int | None, typer.Option(min=0, help="Keep the N newest points.")]
KeepDailyOpt = Annotated[int | None, typer.Option(min=0, help="Keep N daily points.")]
KeepWeeklyOpt = Annotated[int | None, typer.Option(min=0, help="Keep N weekly points.")]
KeepMonthlyOpt = Annotated[int | None, typer.Option(min=0, help="Keep N monthly points.")]
KeepYearlyOpt = Annotated[int | None, typer.Option(min=0, help="Keep N yearly points.")]
KeepWithinOpt = Annotated[
    str | None, typer.Option(help="Keep every point younger than this (e.g. 2d, 36h).")
]
ScheduleOpt = Annotated[
    str | None, typer.Option(help='Cron expression for `job run --due`, e.g. "0 1 * * *".')
]
ParallelOpt = Annotated[int | None, typer.Option(min=1, help="VMs backed up at once.")]
RetriesOpt = Annotated[int | None, typer.Option(min=0, help="Retries of a failed VM.")]
RetryWaitOpt = Annotated[float | None, typer.Option(min=0, help="Seconds between retries.")]
EmailOpt = Annotated[
    list[str] | None, typer.Option("--notify-email", help="Send reports to this address.")
]
NotifyOnOpt = Annotated[
    list[str] | None,
    typer.Option("--notify-on", help="When to email: failure, warning, success (repeat)."),
]
PreHookOpt = Annotated[str | None, typer.Option(help="Command run before the job.")]
PostHookOpt = Annotated[str | None, typer.Option(help="Command run after the job.")]
AlertOpt = Annotated[
    str | None, typer.Option(help="Warn when the last good run is older than this (e.g. 36h).")
]
PruneOpt = Annotated[str | None, typer.Option(help="Prune repository data: after_run or never.")]
QuiesceOpt = Annotated[
    bool | None,
    typer.Option(
        "--quiesce/--no-quiesce",
        help="Ask for application-consistent snapshots (HyperCore 9.7.1+, guest agent).",
    ),
]


@dataclass
class JobOptions:
    """The options `create` and `edit` share; None means "not given"."""

    cluster: str | None = None
    repo: str | None = None
    vms: list[str] | None = None
    tags: list[str] | None = None
    exclude: list[str] | None = None
    disks: list[str] | None = None
    keep: dict[str, Any] | None = None
    schedule: str | None = None
    parallel: int | None = None
    retries: int | None = None
    retry_wait: float | None = None
    notify_email: list[str] | None = None
    notify_on: list[str] | None = None
    pre_hook: str | None = None
    post_hook: str | None = None
    alert_after: str | None = None
    prune: str | None = None
    quiesce: bool | None = None


@app.command("create")
def create(
    name: NameArg,
    cluster: Annotated[str, typer.Option(help=CLUSTER_HELP)],
    repo: Annotated[str, typer.Option(help=REPO_HELP)],
    vm: VmOpt = None,
    tag: TagOpt = None,
    exclude: ExcludeOpt = None,
    disk: DiskOpt = None,
    keep_last: KeepLastOpt = None,
    keep_daily: KeepDailyOpt = None,
    keep_weekly: KeepWeeklyOpt = None,
    keep_monthly: KeepMonthlyOpt = None,
    keep_yearly: KeepYearlyOpt = None,
    keep_within: KeepWithinOpt = None,
    schedule: ScheduleOpt = None,
    parallel: ParallelOpt = None,
    retries: RetriesOpt = None,
    retry_wait: RetryWaitOpt = None,
    notify_email: EmailOpt = None,
    notify_on: NotifyOnOpt = None,
    pre_hook: PreHookOpt = None,
    post_hook: PostHookOpt = None,
    alert_after: AlertOpt = None,
    prune: PruneOpt = None,
    quiesce: QuiesceOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a job of the same name.")] = False,
) -> None:
    """Create a backup job: which VMs go from which cluster into which repository.

    Retention, schedule, retries, notification and hooks are optional.
    """
    check_name(name, "job name")
    config = load_config_for_edit()
    if name in config.jobs and not force:
        raise UsageError(f"job {name!r} already exists", hint="use --force to replace it")
    job = JobConfig(name=name, cluster=cluster, repo=repo)
    keep = _keep(keep_last, keep_daily, keep_weekly, keep_monthly, keep_yearly, keep_within)
    opts = JobOptions(
        cluster, repo, vm, tag, exclude, disk, keep, schedule, parallel, retries, retry_wait,
        notify_email, notify_on, pre_hook, post_hook, alert_after, prune, quiesce,
    )  # fmt: skip
    if not vm and not tag and stdin_is_tty():  # a person: ask step 5 of `hcbak init`
        from hcbak.cli.init_job import complete_job_options

        complete_job_options(config, name, opts, force)
    _apply(job, opts, config)
    config.jobs[name] = job
    save_checked(config)
    info(f"job {name!r} saved to {config.path}")


@app.command("edit")
def edit(
    name: NameArg,
    cluster: ClusterOpt = None,
    repo: RepoOpt = None,
    vm: VmOpt = None,
    tag: TagOpt = None,
    exclude: ExcludeOpt = None,
    disk: DiskOpt = None,
    keep_last: KeepLastOpt = None,
    keep_daily: KeepDailyOpt = None,
    keep_weekly: KeepWeeklyOpt = None,
    keep_monthly: KeepMonthlyOpt = None,
    keep_yearly: KeepYearlyOpt = None,
    keep_within: KeepWithinOpt = None,
    schedule: ScheduleOpt = None,
    parallel: ParallelOpt = None,
    retries: RetriesOpt = None,
    retry_wait: RetryWaitOpt = None,
    notify_email: EmailOpt = None,
    notify_on: NotifyOnOpt = None,
    pre_hook: PreHookOpt = None,
    post_hook: PostHookOpt = None,
    alert_after: AlertOpt = None,
    prune: PruneOpt = None,
    quiesce: QuiesceOpt = None,
) -> None:
    """Change a job; only the options given change.

    An empty string clears a text option (--schedule ""); a list option replaces the list.
    """
    config = load_config()
    job = config.job(name)
    keep = _keep(keep_last, keep_daily, keep_weekly, keep_monthly, keep_yearly, keep_within)
    opts = JobOptions(
        cluster, repo, vm, tag, exclude, disk, keep, schedule, parallel, retries, retry_wait,
        notify_email, notify_on, pre_hook, post_hook, alert_after, prune, quiesce,
    )  # fmt: skip
    if all(getattr(opts, f.name) in (None, {}) for f in fields(opts)):  # keep: {} if none
        raise UsageError("nothing to change: give the options to set", hint="hcbak job edit -h")
    _apply(job, opts, config)
    save_checked(config)
    info(f"job {name!r} updated")


@app.command("list")
def list_(json_out: JsonOpt = False) -> None:
    """List the configured jobs."""
    config = load_config()
    jobs = [config.jobs[n] for n in sorted(config.jobs)]
    if json_out:
        emit_json({"jobs": [job_json(j) for j in jobs]})
        return
    print_table(
        ["NAME", "CLUSTER", "REPO", "SELECTION", "SCHEDULE", "RETENTION"],
        [
            [j.name, j.cluster, j.repo, _selection(j), j.schedule or "-", _retention(j.retention)]
            for j in jobs
        ],
    )


@app.command("show")
def show(name: NameArg, json_out: JsonOpt = False) -> None:
    """Show one job's settings."""
    job = load_config().job(name)
    if json_out:
        emit_json(job_json(job))
        return
    notify = job.notify
    print_fields(
        [
            ("name", job.name),
            ("cluster", job.cluster),
            ("repo", job.repo),
            ("selection", _selection(job)),
            ("disks", ", ".join(job.disks) or "all"),
            ("retention", _retention(job.retention)),
            ("schedule", job.schedule or "(none: run by hand or cron)"),
            ("parallel", job.parallel),
            ("retries", f"{job.retries} (wait {job.retry_wait:g}s)"),
            ("alert_after", job.alert_after or "-"),
            ("prune", job.prune or "-"),
            ("quiesce", "yes (application-consistent where supported)" if job.quiesce else "no"),
            ("notify", f"{', '.join(notify.to)} on {', '.join(notify.on)}" if notify else "-"),
            ("pre_hook", job.pre_hook or "-"),
            ("post_hook", job.post_hook or "-"),
        ]
    )


@app.command("remove")
def remove(name: NameArg) -> None:
    """Remove a job from the config (its restore points stay in the repository)."""
    config = load_config()
    config.job(name)
    del config.jobs[name]
    save_checked(config)
    info(f"job {name!r} removed")


# --- helpers ----------------------------------------------------------------------------
def _keep(
    last: int | None,
    daily: int | None,
    weekly: int | None,
    monthly: int | None,
    yearly: int | None,
    within: str | None,
) -> dict[str, Any]:
    values = dict(zip(RETENTION_KEYS, (last, daily, weekly, monthly, yearly, within), strict=True))
    return {k: v for k, v in values.items() if v is not None}


def _apply(job: JobConfig, opts: "JobOptions", config: Config) -> None:
    """Set the given options on `job`, validating each (UsageError/NotFoundError: exit 2)."""
    if opts.cluster is not None:
        job.cluster = config.cluster(opts.cluster).name
    if opts.repo is not None:
        job.repo = config.repo(opts.repo).name
    for attr in ("vms", "tags", "exclude", "disks"):
        value = getattr(opts, attr)
        if value is not None:
            setattr(job, attr, [v for v in value if v])
    for item in job.disks:
        check_value(validate_disk_filter, item, "--disk")
    if not job.vms and not job.tags:
        raise UsageError("the job selects no VMs", hint="give --vm NAME and/or --tag TAG")
    for key, value in (opts.keep or {}).items():
        if key == "keep_within" and value:
            check_value(parse_duration, value, "--keep-within")
        setattr(job.retention, key, value if value != "" else None)
    job.schedule = _text(opts.schedule, job.schedule, CronSchedule.parse, "--schedule")
    job.alert_after = _text(opts.alert_after, job.alert_after, parse_duration, "--alert-after")
    job.pre_hook = _text(opts.pre_hook, job.pre_hook, None, "--pre-hook")
    job.post_hook = _text(opts.post_hook, job.post_hook, None, "--post-hook")
    job.prune = _text(opts.prune, job.prune, _check_prune, "--prune")
    if opts.parallel is not None:
        job.parallel = opts.parallel
    if opts.retries is not None:
        job.retries = opts.retries
    if opts.retry_wait is not None:
        job.retry_wait = opts.retry_wait
    if opts.quiesce is not None:
        job.quiesce = opts.quiesce
    _apply_notify(job, opts, config)


def _text(
    new: str | None, old: str | None, check: Callable[[str], object] | None, option: str
) -> str | None:
    if new is None:
        return old
    if new == "":
        return None
    if check is not None:
        check_value(check, new, option)
    return new


def _check_prune(value: str) -> str:
    if value not in PRUNE_MODES:
        raise ValueError(f"{value!r} is not one of {', '.join(PRUNE_MODES)}")
    return value


def _apply_notify(job: JobConfig, opts: "JobOptions", config: Config) -> None:
    if opts.notify_on is not None:
        for event in opts.notify_on:
            if event not in NOTIFY_EVENTS:
                raise UsageError(f"--notify-on: {event!r} is not one of {', '.join(NOTIFY_EVENTS)}")
    if opts.notify_email is not None:
        addresses = [a for a in opts.notify_email if a]
        if not addresses:
            job.notify = None
        else:
            for addr in addresses:
                if "@" not in addr or addr.startswith("@") or addr.endswith("@"):
                    raise UsageError(f"--notify-email: {addr!r} is not an email address")
            on = job.notify.on if job.notify else ["failure", "warning"]
            job.notify = EmailNotify(to=addresses, on=list(on))
    if opts.notify_on is not None:
        if job.notify is None:
            raise UsageError("--notify-on needs --notify-email")
        job.notify.on = list(opts.notify_on)
    if job.notify is not None and config.smtp is None:
        raise UsageError(
            "email notification needs an `smtp:` section in the config",
            hint="add one (docs/config.md), then retry",
        )


def _selection(job: JobConfig) -> str:
    parts = [*job.vms, *(f"tag:{t}" for t in job.tags)]
    text = ", ".join(parts)
    if job.exclude:
        text += f" (except {', '.join(job.exclude)})"
    return text


def _retention(r: Retention) -> str:
    if r.is_empty():
        return "keep all"
    parts = [f"{k.removeprefix('keep_')}={getattr(r, k)}" for k in RETENTION_KEYS]
    return " ".join(
        p for p, k in zip(parts, RETENTION_KEYS, strict=True) if getattr(r, k) is not None
    )


def job_json(j: JobConfig) -> dict[str, Any]:
    """Stable --json shape of a job (docs/cli.md)."""
    return {
        "name": j.name,
        "cluster": j.cluster,
        "repo": j.repo,
        "vms": list(j.vms),
        "tags": list(j.tags),
        "exclude": list(j.exclude),
        "disks": list(j.disks),
        "retention": {k: getattr(j.retention, k) for k in RETENTION_KEYS},
        "schedule": j.schedule,
        "parallel": j.parallel,
        "retries": j.retries,
        "retry_wait": j.retry_wait,
        "alert_after": j.alert_after,
        "prune": j.prune,
        "quiesce": j.quiesce,
        "notify": {"email": {"to": list(j.notify.to), "on": list(j.notify.on)}}
        if j.notify
        else None,
        "hooks": {"pre": j.pre_hook, "post": j.post_hook},
    }


job_run.register(app)
