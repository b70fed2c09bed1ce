"""Step 5 of `hcbak init`, also what `hcbak job create NAME` without --vm/--tag asks on
a terminal: VMs picked from the live cluster, exclusions, retention, schedule.

It fills the same `JobOptions` the flags fill, so the job that results is the job the
printed `hcbak job create ...` line makes (the wizard runs that line; `job create`
goes on with the filled options).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hcbak.cli.ask import ask, heading, say
from hcbak.cli.init_choices import (
    RETENTION_PRESETS,
    SCHEDULE_PRESETS,
    Selection,
    command_line,
    human_size,
    parse_exclusions,
    parse_retention,
    parse_schedule,
    parse_selection,
    retention_flags,
    selected_names,
)

if TYPE_CHECKING:
    from hcbak.cli.job import JobOptions
    from hcbak.config import ClusterConfig, Config
    from hcbak.hypercore.records import VM


def complete_job_options(config: Config, name: str, opts: JobOptions, force: bool) -> None:
    """`job create` on a terminal without a selection: ask step 5, print the line."""
    heading(f"The job {name}: which VMs, how long to keep them, when to run")
    ask_job(config.cluster(opts.cluster or ""), opts)
    say("")
    say("The same job, for scripts:")
    say(f"  {command_line(job_create_argv(name, opts, force=force))}")


def ask_job(cluster: ClusterConfig, opts: JobOptions) -> None:
    """Fill the selection, exclusions, retention and schedule of `opts` from answers
    (retention and schedule only when no flag gave them)."""
    vms = live_vms(cluster)
    show_vms(vms)
    vm_tags = {vm.name: list(vm.tags) for vm in vms}
    selection: Selection = ask(
        "Back up which VMs? (names and/or tag:TAG, comma-separated)",
        lambda a: parse_selection(a, vm_tags),
    )
    opts.vms, opts.tags = selection.vms, selection.tags
    covered = selected_names(selection, vm_tags)
    say(f"  selected today: {', '.join(covered)}")
    if selection.tags:  # a tag also picks up VMs tagged later; leave some out by name
        opts.exclude = ask(
            "Leave out which of them? (names, comma-separated; empty for none)",
            lambda a: parse_exclusions(a, covered),
            allow_empty=True,
        )
    if not opts.keep:
        say("Retention presets:")
        for i, preset in enumerate(RETENTION_PRESETS, 1):
            say(f"  {i}. {preset.label}")
        opts.keep = ask(
            "Retention (a number, or e.g. daily=7 weekly=4 last=3 within=2d)",
            parse_retention,
            default="1",
        )
    if opts.schedule is None:
        say("Schedule presets (cron syntax, this host's local time):")
        for i, preset in enumerate(SCHEDULE_PRESETS, 1):
            say(f"  {i}. {preset.label}" + (f"  ({preset.value})" if preset.value else ""))
        opts.schedule = (
            ask("Schedule (a number, or a cron expression)", parse_schedule, default="1") or ""
        )


def live_vms(cluster: ClusterConfig) -> list[VM]:
    """The cluster's VMs now, the worker VM left out (it is never backed up)."""
    from hcbak.cli.output import warn
    from hcbak.engine.connect import connection_settings
    from hcbak.hypercore.client import hypercore_session

    with hypercore_session(connection_settings(cluster), warn=warn) as client:
        vms = client.list_vms()
    worker = cluster.worker_vm or ""
    return sorted((vm for vm in vms if worker not in (vm.name, vm.uuid)), key=lambda v: v.name)


def show_vms(vms: list[VM]) -> None:
    from hcbak.cli.output import print_table

    rows = []
    for vm in vms:
        disks = [d for d in vm.disks if d.is_data_disk]
        size = human_size(sum(d.capacity for d in disks))
        rows.append([vm.name, ", ".join(vm.tags) or "-", len(disks), size, vm.state.lower()])
    print_table(["NAME", "TAGS", "DISKS", "SIZE", "STATE"], rows, title="VMs on the cluster")


def job_create_argv(name: str, opts: JobOptions, *, force: bool = False) -> list[str]:
    """`job create NAME --cluster ... --vm ...` for these options (the flags they came
    from, or would have)."""
    argv = ["job", "create", name, "--cluster", opts.cluster or "", "--repo", opts.repo or ""]
    repeated = (("--vm", opts.vms), ("--tag", opts.tags), ("--exclude", opts.exclude),
                ("--disk", opts.disks), ("--notify-email", opts.notify_email),
                ("--notify-on", opts.notify_on))  # fmt: skip
    for flag, values in repeated:
        for value in values or []:
            argv += [flag, value]
    argv += retention_flags(opts.keep or {})
    single: tuple[tuple[str, Any], ...] = (
        ("--schedule", opts.schedule or None),
        ("--parallel", opts.parallel),
        ("--retries", opts.retries),
        ("--retry-wait", opts.retry_wait),
        ("--pre-hook", opts.pre_hook),
        ("--post-hook", opts.post_hook),
        ("--alert-after", opts.alert_after),
        ("--prune", opts.prune),
    )
    for flag, value in single:
        if value is not None:
            argv += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    if opts.quiesce is not None:
        argv.append("--quiesce" if opts.quiesce else "--no-quiesce")
    if force:
        argv.append("--force")
    return argv
