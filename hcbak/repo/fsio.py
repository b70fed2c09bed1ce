"""File-system primitives every repository file goes through.

The atomic writer and the private-mode helpers are hcbak.fsio's (the one writer for
every file hcbak writes: temp name in the same folder, write, check the length, fsync,
`os.replace`, fsync the folder; network-filesystem errnos tolerated for fsync(dir) and
chmod). This module adds what only the repository needs: its error types (an OSError
becomes RepoError, ENOSPC/EDQUOT `NoSpaceError` with the temp file removed), vectored
and positional writes, page-cache dropping and durable deletes.

Everything hcbak writes is private whatever the umask: files 0600, folders 0700. An
unencrypted repository is the VMs' disks in the clear and an encrypted one holds the
wrapped key; neither is for other local users.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hcbak.errors import NoSpaceError, RepoError
from hcbak.fsio import (
    PRIVATE_DIR,
    PRIVATE_FILE,
    TMP_PREFIX,
    TOLERATED_ERRNOS,
    chmod_tolerant,
    fchmod_tolerant,
    fsync_dir,
    make_private_dir,
    open_private,
    remove_quietly,
    tmp_path_for,
    write_atomic,
)

__all__ = [
    "NO_SPACE_ERRNOS",
    "PRIVATE_DIR",
    "PRIVATE_FILE",
    "TMP_PREFIX",
    "TOLERATED_ERRNOS",
    "atomic_write",
    "chmod_tolerant",
    "drop_cache",
    "fchmod_tolerant",
    "fsync_dir",
    "make_private_dir",
    "open_private",
    "pwrite_all",
    "raise_os_error",
    "remove_durably",
    "remove_quietly",
    "tmp_path_for",
    "translate_os_errors",
    "typed_os_error",
    "write_all",
]

NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})

# Indirection points for the pack writer's and the lock's own syncs, so tests can make
# them raise (see tests/repo/test_write_fastpaths.py); hcbak.fsio has the writer's.
_fsync = os.fsync
_fdatasync = os.fdatasync


def drop_cache(fd: int) -> None:
    """Let the kernel reuse the page cache of a file written and fsynced in full.

    A backup writes GiBs it will not read back soon: keeping them cached evicts what
    the host actually uses, and every new cache page costs a fresh page (on VMs whose
    free memory goes back to the hypervisor, several microseconds each). Dropping a
    sealed pack's pages lets the next pack reuse them. Advisory: errors are ignored.
    """
    fadvise = getattr(os, "posix_fadvise", None)
    if fadvise is not None:
        try:
            fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass


def write_all(fd: int, parts: list[bytes]) -> int:
    """Write the pieces in order with as few syscalls as possible; returns the length."""
    total = sum(len(p) for p in parts)
    done = os.writev(fd, parts)
    while done < total:  # a short write (signal, nearly full disk): write the rest
        rest = b"".join(parts)[done:]  # rare, so the copy does not matter
        done += os.write(fd, rest)
    return total


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """pwrite every byte: a nearly full disk writes part of a block and says so only in
    the count; the next call then raises ENOSPC instead of the data silently missing."""
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, offset)
        view, offset = view[done:], offset + done


def typed_os_error(exc: OSError, what: str) -> RepoError:
    """The typed repository error for an OSError (ENOSPC/EDQUOT -> NoSpaceError)."""
    if exc.errno in NO_SPACE_ERRNOS:
        return NoSpaceError(
            f"no space left on the repository filesystem while writing {what}",
            hint="free space there; the repository is unchanged except for unreferenced "
            "data that `hcbak repo prune` removes",
        )
    return RepoError(f"could not write {what}: {exc.strerror or exc}")


def raise_os_error(exc: OSError, what: str) -> None:
    """Raise the typed repository error for an OSError."""
    raise typed_os_error(exc, what) from exc


def atomic_write(final: Path, data: bytes) -> None:
    """hcbak.fsio.write_atomic (mode 0600) with the repository's error types."""
    try:
        write_atomic(final, data)
    except OSError as exc:
        raise typed_os_error(exc, str(final)) from exc


def remove_durably(path: Path) -> None:
    """Delete a file and make the deletion durable (used by prune, in protocol order)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    fsync_dir(path.parent)


@contextmanager
def translate_os_errors(what: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise_os_error(exc, what)
