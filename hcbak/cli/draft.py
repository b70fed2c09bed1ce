"""A config held in memory while `hcbak init` runs the real commands against it.

`hcbak init` runs `cluster add`, `repo add`, `notify smtp` and `job create` as they
are, so what a person answers and what a script types produce the same config. Those
commands load and save the config through `cli/common.py`; while a draft is open,
common.py hands them this draft instead of the file, and their saves land here. The
file is written once, when init ends, through the usual atomic save: a Ctrl-C at any
step leaves it byte for byte as it was.

The draft keeps the config as the YAML text a save would write, so every command
parses it anew, exactly as it would parse the file (a failed command changes nothing).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hcbak.config import Config


@dataclass
class ConfigDraft:
    """The config file at `path` as the commands run so far left it (not yet written)."""

    path: Path
    text: str | None  # None: no file yet and nothing saved to the draft

    def load(self, *, missing_ok: bool) -> Config:
        from hcbak.config import load_config, parse_config

        if self.text is None:
            return load_config(self.path, missing_ok=missing_ok)
        return parse_config(self.text, self.path)

    def store(self, text: str) -> None:
        self.text = text


_open: ConfigDraft | None = None


def active() -> ConfigDraft | None:
    """The open draft, or None when commands read and write the file itself."""
    return _open


@contextmanager
def drafting(path: Path, text: str | None) -> Iterator[ConfigDraft]:
    """Route the commands' config loads and saves to a draft starting from `text`."""
    global _open
    previous, _open = _open, ConfigDraft(path, text)
    try:
        yield _open
    finally:
        _open = previous
