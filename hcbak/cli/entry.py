"""The `hcbak` console script: `job run` without loading Typer, and its scrypt started first.

`hcbak job run` is what cron runs, every few minutes on every backup host, and a
small incremental is over in well under a second. Typer and its click took 60 ms of
that to import and build (benchmarks/RESULTS.md). So the common forms of `job run`
are read here and handed to the same `run_jobs` the Typer command calls. Anything
else (another command, --help, an option or form not listed in `parse_job_run`) goes
to Typer, which parses, checks and reports everything itself. A test holds the two
to the same result for every argument list this accepts.

Before either, the repository's scrypt (~0.16 s) is started on the other core for
`job run NAME` and `job run --all` (engine/background.py). A wrong guess costs only
that scrypt's CPU: the repository open derives its own key when no early result
matches.
"""

import os
import sys
from pathlib import Path
from typing import NamedTuple

# `job run` flags this reads, by option name -> run_jobs keyword.
_FLAGS = {
    "--all": "all_jobs",
    "--due": "due",
    "--json": "json_out",
    "--dry-run": "dry_run",
    "--full": "full",
}


class JobRun(NamedTuple):
    """`[--config P] [--debug] job run ...` as Typer would pass it on."""

    config: Path | None
    debug: bool
    names: list[str]
    all_jobs: bool = False
    due: bool = False
    json_out: bool = False
    dry_run: bool = False
    full: bool = False
    parallel: int | None = None


def main() -> None:
    from hcbak.cli.exits import exit_now
    from hcbak.malloc_tuning import tune_for_blocks

    tune_for_blocks()  # a process setting: every data path moves MiB-sized blocks

    call = parse_job_run(sys.argv[1:])
    if call is None:
        from hcbak.cli.main import main as cli_main

        cli_main()
        return
    from hcbak.cli.context import show_secret_warnings

    show_secret_warnings()  # the early key derivation below reads the passphrase file
    start_job_key_early(call)
    exit_now(run_job_run(call, sys.argv[1:]))


def run_job_run(call: JobRun, argv: list[str]) -> int:
    """What Typer's `job run` command does with these arguments, without Typer."""
    from hcbak.cli.context import apply_root_options
    from hcbak.cli.exits import guarded
    from hcbak.cli.job_run import run_jobs

    def run() -> int:
        apply_root_options(call.config, call.debug)
        return int(
            run_jobs(
                call.names,
                all_jobs=call.all_jobs,
                due=call.due,
                json_out=call.json_out,
                dry_run=call.dry_run,
                full=call.full,
                parallel=call.parallel,
            )
        )

    return guarded(run, argv)


def parse_job_run(argv: list[str]) -> JobRun | None:
    """The arguments of `hcbak [--config P] [--debug] job run ...`, or None for
    anything this does not read exactly as Typer would (Typer then runs it)."""
    if os.environ.get("_HCBAK_COMPLETE"):  # a shell completion request, not a run
        return None
    config: Path | None = None
    debug = False
    i = 0
    while i < len(argv) and argv[i] != "job":
        arg = argv[i]
        if arg == "--debug" and not debug:
            debug = True
        elif (arg in ("--config", "-c") or arg.startswith("--config=")) and config is None:
            value = arg[len("--config=") :] if "=" in arg else _value(argv, i)
            if value is None:
                return None
            config = Path(value)
            i += 0 if "=" in arg else 1
        else:  # --version, --help, an unknown option, a repeated one
            return None
        i += 1
    if argv[i : i + 2] != ["job", "run"]:
        return None
    names: list[str] = []
    flags: dict[str, bool] = {}
    parallel: int | None = None
    rest = argv[i + 2 :]
    k = 0
    while k < len(rest):
        arg = rest[k]
        if arg in _FLAGS and _FLAGS[arg] not in flags:
            flags[_FLAGS[arg]] = True
        elif (arg == "--parallel" or arg.startswith("--parallel=")) and parallel is None:
            value = arg.partition("=")[2] if "=" in arg else _value(rest, k)
            if value is None or not value.isdigit() or not value.isascii() or int(value) < 1:
                return None
            parallel = int(value)
            k += 0 if "=" in arg else 1
        elif arg and not arg.startswith("-"):
            names.append(arg)
        else:  # --help, --, an unknown option, a repeated one, an empty name
            return None
        k += 1
    return JobRun(config, debug, names, parallel=parallel, **flags)


def _value(argv: list[str], i: int) -> str | None:
    """The value after option `argv[i]`, if it is a plain one."""
    if i + 1 >= len(argv) or not argv[i + 1] or argv[i + 1].startswith("-"):
        return None
    return argv[i + 1]


def start_job_key_early(call: JobRun) -> None:
    """Best effort, never an error: the real run reports every problem."""
    if call.due or not (call.names or call.all_jobs):
        return
    try:
        from hcbak.config import load_config
        from hcbak.engine.background import derive_repository_key_early

        config = load_config(call.config)
        jobs = list(config.jobs.values())
        job = config.jobs.get(call.names[0]) if call.names else (jobs[0] if jobs else None)
        if job is not None:
            derive_repository_key_early(config, job)
    except Exception:  # a guess must never break the command it runs ahead of
        return
