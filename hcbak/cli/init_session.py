"""What every step of `hcbak init` shares: the draft config, and running real commands.

Each step ends by running real `hcbak` commands in this process (`cli.main.run`), with
the exact arguments it prints as `$ hcbak ...`; those that change the config are kept
per step, so a step done again replaces its lines and the final recap is a script
that builds the same config.
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from hcbak.cli.ask import say
from hcbak.cli.draft import ConfigDraft
from hcbak.cli.init_choices import command_line

if TYPE_CHECKING:
    from hcbak.config import Config

T = TypeVar("T")
INTERRUPTED = 130


class Redo(Exception):
    """Do this step again from its first question (its config changes are undone)."""


class Interrupted(Exception):
    """A command run by a step was interrupted (Ctrl-C): the wizard stops, saving nothing."""


@dataclass
class InitSession:
    """The draft being built, how to call hcbak, and the commands that built it."""

    draft: ConfigDraft
    shown_args: list[str]  # global options printed in each line (--config when given)
    run_args: list[str]  # what the commands run with (also --debug when given)
    script: dict[int, list[list[str]]] = field(default_factory=dict)
    step: int = 0
    step_start: str | None = None  # the draft when the current step began

    def config(self) -> Config:
        return self.draft.load(missing_ok=True)

    def attempt(self, step: int, body: Callable[[], T]) -> T:
        """Run a step until it finishes; a Redo rolls the draft back to the step's start."""
        self.step = step
        self.step_start = self.draft.text
        while True:
            self.script[step] = []
            try:
                return body()
            except Redo:
                self.undo_step()
                say("  (this step's changes are undone; once more)")

    def undo_step(self) -> None:
        """Forget this step's changes (a step done again, or skipped after a try)."""
        self.draft.text = self.step_start
        self.script[self.step] = []

    def run(self, argv: list[str], *, edits_config: bool = False) -> int:
        """Run `hcbak ARGV` as a script would, after printing it; its exit code.

        A config-editing command's "saved to PATH" line would be untrue here (the draft
        is written at the end), so its stderr is read and shown without that line."""
        from hcbak.cli.main import run

        say(f"$ {command_line([*self.shown_args, *argv])}")
        if edits_config:
            with _stderr_kept() as kept:
                code = run([*self.run_args, *argv])
            for line in kept.getvalue().splitlines():
                if not line.endswith(f" saved to {self.draft.path}"):
                    sys.stderr.write(line + "\n")
            if code == 0:
                self.script.setdefault(self.step, []).append(argv)
        else:
            code = run([*self.run_args, *argv])
        sys.stdout.flush()
        if code == INTERRUPTED:
            raise Interrupted
        return code

    def recap(self) -> list[str]:
        """The config-changing commands of every step, in order, as shell lines."""
        return [
            command_line([*self.shown_args, *argv])
            for step in sorted(self.script)
            for argv in self.script[step]
        ]


class _TTYBuffer(io.StringIO):
    """Captured stderr that still counts as the terminal it stands in for (info lines
    keep their terminal form, without timestamps)."""

    def isatty(self) -> bool:
        return True


@contextlib.contextmanager
def _stderr_kept() -> Iterator[io.StringIO]:
    buffer = _TTYBuffer()
    with contextlib.redirect_stderr(buffer):
        yield buffer


def unused_name(base: str, taken: Iterable[str]) -> str:
    """`base`, or `base2`, `base3`... the first name not in `taken`."""
    names = set(taken)
    if base not in names:
        return base
    n = 2
    while f"{base}{n}" in names:
        n += 1
    return f"{base}{n}"


def absolute(path: str) -> Path:
    return Path(path).expanduser().absolute()
