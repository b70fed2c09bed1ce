"""Root Typer app: builds each command group on use; errors become exit codes in
`cli/exits.py`."""

import importlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from typer._click.exceptions import NoArgsIsHelpError
from typer._click.exceptions import UsageError as ClickUsageError
from typer.core import TyperGroup

from hcbak import __version__
from hcbak.cli.context import apply_root_options
from hcbak.cli.exits import exit_now, guarded, interrupted
from hcbak.errors import ExitCode

if TYPE_CHECKING:
    from typer._click import Command, Context  # typer vendors click without public aliases

EXIT_CODES_EPILOG = (
    "Exit codes: 0 ok, 1 warnings, 2 usage/config error, 3 partial (some VMs failed), "
    "4 failed, 5 busy/locked, 6 integrity error, 130 interrupted. See docs/exit-codes.md."
)

# Command groups, in `hcbak --help` order, by the module that defines each one's `app`.
GROUPS = {
    "cluster": "hcbak.cli.cluster",
    "repo": "hcbak.cli.repo",
    "job": "hcbak.cli.job",
    "config": "hcbak.cli.config_cmd",
    "points": "hcbak.cli.points",
    "restore": "hcbak.cli.restore",
    "notify": "hcbak.cli.notify",
    "sim": "hcbak.cli.sim",
    "schedule": "hcbak.cli.schedule_cmd",
    "completion": "hcbak.cli.completion_cmd",
}
# Single top-level commands, also built on use, by the module whose `app` holds it.
COMMANDS = {
    "init": "hcbak.cli.init_cmd",
    "demo": "hcbak.cli.demo",
    "mount": "hcbak.cli.mount",
}
LAZY = {**GROUPS, **COMMANDS}


class LazyGroup(TyperGroup):
    """The root group; it imports and builds a command (group) only when it is used.

    A cron run of `hcbak job run` used to import and build all eight groups first:
    about 50 ms more on a 2-core VM (benchmarks/RESULTS.md). `--help`, "did you mean"
    and the command tree still see every command.
    """

    def list_commands(self, ctx: "Context") -> list[str]:
        own = [name for name in super().list_commands(ctx) if name not in LAZY]
        return [*own, *LAZY]  # version, the groups, demo, mount

    def get_command(self, ctx: "Context", cmd_name: str) -> "Command | None":
        if cmd_name in LAZY and cmd_name not in self.commands:
            self.add_command(_build(cmd_name), cmd_name)
        return super().get_command(ctx, cmd_name)

    def resolve_command(
        self, ctx: "Context", args: list[str]
    ) -> "tuple[str | None, Command | None, list[str]]":
        if args and args[0] not in self.commands and args[0] not in LAZY:
            self.load_all()  # an unknown name: "did you mean" looks at every command
        return super().resolve_command(ctx, args)

    def load_all(self) -> "LazyGroup":
        for name in LAZY:
            self.get_command(typer.Context(self), name)
        return self


def _build(name: str) -> "Command":
    app = importlib.import_module(LAZY[name]).app
    # a group even when it has one command; a single command stays a command
    command = typer.main.get_group(app) if name in GROUPS else typer.main.get_command(app)
    command.name = name
    return command


app = typer.Typer(
    cls=LazyGroup,
    name="hcbak",
    help="Back up and restore Scale Computing SC//HyperCore VMs into open, deduplicated, "
    "optionally encrypted repositories.",
    epilog=EXIT_CODES_EPILOG,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"hcbak {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="Config file (default: $HCBAK_CONFIG, /etc/hcbak/config.yaml for root, "
            "else ~/.config/hcbak/config.yaml).",
            show_default=False,
        ),
    ] = None,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks and debug logs on stderr.")
    ] = False,
    _version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            help="Print the hcbak version and exit.",
            callback=_print_version,
            is_eager=True,
            expose_value=False,
        ),
    ] = False,
) -> None:
    apply_root_options(config, debug)


@app.command()
def version(
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print the hcbak version."""
    from hcbak.cli.output import emit_json

    if json_out:
        emit_json({"version": __version__, "python": sys.version.split()[0]})
    else:
        typer.echo(f"hcbak {__version__}")


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return the exit code (tests call this in-process)."""
    args = list(sys.argv[1:] if argv is None else argv)
    command = root_command()
    return guarded(lambda: _run_typer(command, args), args)


def _run_typer(command: "LazyGroup", args: list[str]) -> int:
    """The command's exit code; Typer's own exits and usage errors become codes here,
    everything else is left to `guarded`."""
    try:
        result = command.main(args=args, prog_name="hcbak", standalone_mode=False)
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        return interrupted()
    except NoArgsIsHelpError as exc:  # `hcbak repo`: the group's help, exit 2
        exc.show()
        return int(ExitCode.USAGE)
    except typer.TyperException as exc:  # click-style usage errors (vendored click)
        sys.stderr.write(f"error: {usage_line(exc)}\n")
        return int(ExitCode.USAGE)
    return int(result) if isinstance(result, int) else int(ExitCode.OK)


def usage_line(exc: "typer.TyperException") -> str:
    """Click's usage error as one line, with where to look: its own block (usage,
    "Try ...", blank, "Error: ...") breaks the one-line `error:` promise of
    docs/exit-codes.md that scripts and cron mail rely on."""
    text = " ".join(exc.format_message().split()).rstrip(".")
    ctx = exc.ctx if isinstance(exc, ClickUsageError) else None
    if ctx is None:
        return text
    return f"{text} (see '{ctx.command_path} {ctx.help_option_names[0]}')"


def root_command(*, load_all: bool = False) -> "LazyGroup":
    """The click command of the app; `load_all` builds every group (tree walkers)."""
    command = typer.main.get_command(app)
    assert isinstance(command, LazyGroup)
    return command.load_all() if load_all else command


def main() -> None:
    exit_now(run())
