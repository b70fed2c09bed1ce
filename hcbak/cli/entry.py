"""The `hcbak` console script: start a backup's key derivation before the CLI loads.

`hcbak job run` spends its first ~0.2 s importing typer and building the command
before it reads the config, and the repository's scrypt (~0.17 s) then lies on the
run's critical path. For `job run NAME` and `job run --all`, this reads the config
first and starts that scrypt (engine/background.py), then hands over to the CLI, which
parses and checks everything itself. A wrong guess (an option this does not know, a
typo) costs only that scrypt's CPU on the other core: the repository open derives its
own key when no early result matches.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main() -> None:
    start_job_key_early(sys.argv[1:])
    from hcbak.cli.main import main as cli_main

    cli_main()


def start_job_key_early(argv: list[str]) -> None:
    """Best effort, never an error: the real parse reports every problem."""
    target = job_run_target(argv)
    if target is None:
        return
    config_path, name = target
    try:
        from hcbak.config import load_config
        from hcbak.engine.background import derive_repository_key_early

        config = load_config(Path(config_path) if config_path else None)
        jobs = list(config.jobs.values())
        job = config.jobs.get(name) if name else (jobs[0] if jobs else None)
        if job is not None:
            derive_repository_key_early(config, job)
    except Exception:  # a guess must never break the command it runs ahead of
        return


def job_run_target(argv: list[str]) -> tuple[str | None, str | None] | None:
    """(config path or None, first job name or None for --all) of `[--config P] job run`,
    else None (other commands, --due, --help)."""
    config: str | None = None
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        if argv[i] in ("--config", "-c") and i + 1 < len(argv):
            config = argv[i + 1]
            i += 2
            continue
        if argv[i].startswith("--config="):
            config = argv[i].partition("=")[2]
        i += 1
    if argv[i : i + 2] != ["job", "run"]:
        return None
    rest = argv[i + 2 :]
    if any(arg in ("--due", "--help", "-h") for arg in rest):
        return None
    names = [
        arg
        for k, arg in enumerate(rest)
        if not arg.startswith("-") and (k == 0 or rest[k - 1] != "--parallel")
    ]
    if names:
        return config, names[0]
    return (config, None) if "--all" in rest else None
