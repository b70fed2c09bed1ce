"""Files hcbak writes outside its config (completion scripts, systemd units).

One rule for all of them: a file is hcbak's when it carries hcbak's marker text; hcbak
replaces or deletes only such files, and another file at the same path is the user's,
left alone unless `--force` says otherwise. Writes go through hcbak.fsio.write_atomic
(temp file + fsync + rename), so a crash never leaves half a unit file for systemd to
read.
"""

from __future__ import annotations

from pathlib import Path

from hcbak.errors import UsageError
from hcbak.fsio import write_atomic


def is_ours(path: Path, marker: str) -> bool:
    """True when `path` is a file whose text contains `marker`."""
    try:
        with path.open(encoding="utf-8", errors="replace") as fh:
            return marker in fh.read(64 * 1024)
    except FileNotFoundError:
        return False


def check_writable(path: Path, marker: str, *, force: bool) -> None:
    """Refuse (exit 2) to replace a file at `path` that is not hcbak's, unless forced."""
    if path.is_symlink() or (path.exists() and not path.is_file()):
        if not force:
            raise UsageError(
                f"{path} exists and is not a plain file", hint="move it away or pass --force"
            )
        return
    if path.exists() and not force and not is_ours(path, marker):
        raise UsageError(
            f"{path} exists and was not written by hcbak", hint="move it away or pass --force"
        )


def write_file(path: Path, text: str) -> str:
    """Write `text` atomically (mode 0644); "unchanged" when it is already there."""
    try:
        if path.is_file() and not path.is_symlink() and path.read_text(encoding="utf-8") == text:
            return "unchanged"
    except UnicodeDecodeError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.is_dir():
        _remove(path)
    write_atomic(path, text.encode("utf-8"), mode=0o644)
    return "written"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        raise UsageError(f"{path} is a directory; hcbak will not remove it")
    path.unlink()
