"""Output helpers: data to stdout (tables or JSON), logs and progress to stderr.

Rich formatting only when the stream is a TTY; cron and pipes get plain lines.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any


def is_tty(stream: Any = None) -> bool:
    stream = stream if stream is not None else sys.stdout
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def emit_json(obj: Any) -> None:
    """Print one JSON document to stdout (stable keys, for scripts)."""
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def print_table(
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    title: str | None = None,
    whole: Sequence[str] = (),
) -> None:
    """A rich table on a TTY, tab-separated lines with a header otherwise.

    On a narrow terminal a long cell folds onto more lines instead of ending in `…`;
    a word in a `whole` column (point ids: people copy them into the next command)
    is never split, whatever the width: the column is as wide as its longest word.
    """
    rows = [["" if v is None else str(v) for v in row] for row in rows]
    if is_tty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for i, col in enumerate(columns):
            if col in whole:
                longest = max((len(w) for row in rows for w in row[i].split()), default=0)
                table.add_column(col, overflow="fold", min_width=max(longest, len(col)))
            else:
                table.add_column(col, overflow="fold")
        for row in rows:
            table.add_row(*row)
        # crop=False: a table that cannot shrink to the terminal (whole columns) runs
        # past the edge and the terminal wraps it, rather than losing its right end.
        Console().print(table, crop=False)
        return
    sys.stdout.write("\t".join(columns) + "\n")
    for row in rows:
        sys.stdout.write("\t".join(row) + "\n")
    sys.stdout.flush()


def print_fields(pairs: Iterable[tuple[str, Any]]) -> None:
    """Key: value lines for `show` commands."""
    pairs = list(pairs)
    width = max((len(k) for k, _ in pairs), default=0)
    for key, value in pairs:
        sys.stdout.write(f"{key + ':':<{width + 1}} {'' if value is None else value}\n")
    sys.stdout.flush()


def info(message: str) -> None:
    """A progress/log line on stderr; timestamped when not a TTY (cron mail)."""
    if is_tty(sys.stderr):
        sys.stderr.write(message + "\n")
    else:
        stamp = datetime.now(UTC).astimezone().strftime("%Y-%m-%dT%H:%M:%S%z")
        sys.stderr.write(f"{stamp} {message}\n")
    sys.stderr.flush()


def warn(message: str) -> None:
    sys.stderr.write(f"warning: {message}\n")
    sys.stderr.flush()
