"""Questions on a terminal for `hcbak init` and `job create`: ask until the answer is valid.

An answer a check refuses is asked again with the reason (the ValueError's text, or an
hcbak error's one line), never a traceback. Prompts go through `typer.prompt` and
`typer.confirm`, whose Ctrl-C ends the command as "interrupted" (exit 130).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import typer

from hcbak.errors import HcbakError

T = TypeVar("T")


def ask(
    question: str,
    check: Callable[[str], T],
    default: str | None = None,
    *,
    allow_empty: bool = False,
) -> T:
    """Prompt until `check(answer)` accepts; an empty answer takes `default` (or, with
    `allow_empty`, is checked as it is)."""
    while True:
        answer = typer.prompt(question, default=default or "", show_default=bool(default), type=str)
        if not answer.strip() and not default and not allow_empty:
            say("  not accepted: an answer is needed")
            continue
        try:
            return check(answer)
        except ValueError as exc:
            say(f"  not accepted: {exc}")
        except HcbakError as exc:
            say(f"  not accepted: {exc.one_line()}")


def confirm(question: str, default: bool) -> bool:
    return bool(typer.confirm(question, default=default))


def say(text: str = "") -> None:
    typer.echo(text)


def heading(text: str) -> None:
    typer.echo("")
    typer.secho(text, bold=True)
