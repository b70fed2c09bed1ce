"""`hcbak config show|check`: print the effective config, validate it before cron does."""

from typing import Annotated, Any

import typer
import yaml

from hcbak.cli.common import load_config
from hcbak.cli.output import emit_json, info
from hcbak.config import (
    Config,
    cluster_to_dict,
    config_to_dict,
    repo_to_dict,
    smtp_to_dict,
    state_dir,
)
from hcbak.errors import SecretError
from hcbak.secrets import SecretRef

app = typer.Typer(help="Show and check the config file.", no_args_is_help=True)


@app.command("show")
def show(
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print the config as hcbak understands it (inline secrets masked as ***)."""
    config = load_config()
    data = _masked(config)
    if json_out:
        emit_json({"path": str(config.path), "state_dir_effective": str(state_dir(config)), **data})
        return
    typer.echo(f"# {config.path}")
    typer.echo(yaml.safe_dump(data, sort_keys=False, default_flow_style=False).rstrip())


@app.command("check")
def check(
    secrets: Annotated[
        bool,
        typer.Option(
            "--secrets/--no-secrets",
            help="Also resolve every password/passphrase reference (runs password commands).",
        ),
    ] = True,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Validate the config (exit 0 when usable, 2 with the first problem)."""
    config = load_config()
    problems: list[dict[str, str]] = []
    if secrets:
        for where, ref in _secret_refs(config):
            try:
                ref.resolve()
            except SecretError as exc:
                problems.append({"where": where, "source": ref.describe(), "error": exc.message})
    summary = {
        "path": str(config.path),
        "ok": not problems,
        "clusters": len(config.clusters),
        "repositories": len(config.repositories),
        "jobs": len(config.jobs),
        "secret_problems": problems,
    }
    if json_out:
        emit_json(summary)
    for problem in problems:
        info(f"{problem['where']}: {problem['error']}")
    if problems:
        first = problems[0]
        raise SecretError(
            f"{first['where']}: {first['error']}",
            path=str(config.path),
            hint=f"{_count(len(problems), 'secret reference')} could not be resolved",
        )
    if not json_out:
        counts = (
            f"{_count(len(config.clusters), 'cluster')}, "
            f"{_count(len(config.repositories), 'repository', 'repositories')}, "
            f"{_count(len(config.jobs), 'job')}"
        )
        typer.echo(f"{config.path}: ok ({counts})")


def _count(n: int, one: str, many: str = "") -> str:
    """`1 repository`, `2 repositories`: the line an operator reads in cron mail."""
    return f"{n} {one if n == 1 else many or one + 's'}"


def _secret_refs(config: Config) -> list[tuple[str, SecretRef]]:
    refs: list[tuple[str, SecretRef | None]] = []
    refs += [(f"clusters.{n}.password", c.password) for n, c in sorted(config.clusters.items())]
    refs += [
        (f"repositories.{n}.passphrase", r.passphrase)
        for n, r in sorted(config.repositories.items())
    ]
    refs += [
        (f"repositories.{n}.s3.credentials", r.s3.credentials)
        for n, r in sorted(config.repositories.items())
        if r.s3 is not None
    ]
    if config.smtp is not None:
        refs.append(("smtp.password", config.smtp.password))
    return [(where, ref) for where, ref in refs if ref is not None]


def _masked(config: Config) -> dict[str, Any]:
    data = config_to_dict(config)
    data["clusters"] = {
        n: cluster_to_dict(c, reveal=False) for n, c in sorted(config.clusters.items())
    }
    data["repositories"] = {
        n: repo_to_dict(r, reveal=False) for n, r in sorted(config.repositories.items())
    }
    if config.smtp is not None:
        data["smtp"] = smtp_to_dict(config.smtp, reveal=False)
    return data
