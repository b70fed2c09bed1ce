"""The one way hcbak writes a file: atomic, durable, with the mode its owner asks for.

Every file hcbak writes goes through `write_atomic`: repository files (via
repo/fsio.py, which adds the repository's error types), the config, the state dir's
journals and history, completion scripts and systemd units. The pattern is restic's
local backend: temp name in the same folder, write, check the length, fsync,
`os.replace`, fsync the folder; a crash at any point leaves the old file or the new
one, never a mix. Content-addressed files are write-once: never renamed over an
existing one (SMB/NFS refuse or misbehave, borg #5253).

fsync of a directory and chmod fail with EPERM/ENOTSUP/EINVAL/ENOSYS on some network
filesystems (restic #1756, #5342); those errnos, and only those, are tolerated.

Private by default whatever the umask: files 0600, folders 0700. The mode is asked
for at creation (never a window where the file is readable) and set again with
chmod, so a umask that masks the owner's own bits cannot make a file unusable either.

A leaf module: it imports nothing from hcbak, so every layer may use it. It raises
plain OSError; each caller turns that into its own error (repo: RepoError or
NoSpaceError; config: ConfigError).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

# errnos that network filesystems return for fsync(dir)/chmod although the data is safe.
TOLERATED_ERRNOS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS})
TMP_PREFIX = ".tmp-"
PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700

# Indirection points so tests can make them raise (see tests/repo/test_locks_fsio.py).
_fsync = os.fsync
_chmod = os.chmod
_fchmod = os.fchmod


def write_atomic(final: Path, data: bytes, *, mode: int = PRIVATE_FILE) -> None:
    """Write `data` to `final` atomically and durably, the file getting `mode`.

    The temp file is removed on any failure; the OSError is raised as it came.
    (Write-once names are the object stores' `put(if_absent=True)`: a hard link.)
    """
    tmp = tmp_path_for(final)
    try:
        with os.fdopen(open_private(tmp, os.O_WRONLY | os.O_EXCL, mode=mode), "wb") as fh:
            fh.write(data)
            fh.flush()
            if fh.tell() != len(data) or os.fstat(fh.fileno()).st_size != len(data):
                raise OSError(errno.EIO, f"short write to {tmp}")
            _fsync(fh.fileno())
        os.replace(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        remove_quietly(tmp)
        raise


def tmp_path_for(final: Path) -> Path:
    """A temp name beside `final` (same filesystem, so the rename is atomic)."""
    return final.parent / f"{TMP_PREFIX}{final.name[:24]}-{os.urandom(6).hex()}"


def fsync_dir(path: Path) -> None:
    """Make a rename/create in `path` durable; tolerate filesystems that cannot."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        if exc.errno in TOLERATED_ERRNOS:
            return
        raise
    try:
        _fsync(fd)
    except OSError as exc:
        if exc.errno not in TOLERATED_ERRNOS:
            raise
    finally:
        os.close(fd)


def chmod_tolerant(path: Path, mode: int) -> None:
    """chmod that ignores the errnos of filesystems without POSIX modes (CIFS, some NFS)."""
    try:
        _chmod(path, mode)
    except OSError as exc:
        if exc.errno not in TOLERATED_ERRNOS:
            raise


def fchmod_tolerant(fd: int, mode: int) -> None:
    """fchmod that ignores the errnos of filesystems without POSIX modes."""
    try:
        _fchmod(fd, mode)
    except OSError as exc:
        if exc.errno not in TOLERATED_ERRNOS:
            raise


def open_private(path: Path | str, flags: int, *, mode: int = PRIVATE_FILE) -> int:
    """`os.open` of a new or existing file with O_CREAT and `mode` (0600 unless told)
    whatever the umask."""
    fd = os.open(path, flags | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        fchmod_tolerant(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_private_dir(path: Path, *, parents: bool = False) -> None:
    """mkdir with mode 0700 whatever the umask; with `parents`, every folder it has to
    create is 0700 too. A folder that exists already is left as it is (its owner chose)."""
    path = Path(path)
    missing: list[Path] = []
    if parents:
        for folder in (path, *path.parents):
            if folder.is_dir():
                break
            missing.append(folder)
        missing.reverse()
    else:
        missing = [path]
    for folder in missing:
        try:
            folder.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:
            if not folder.is_dir():
                raise
            continue  # created meanwhile by another process or thread: theirs
        chmod_tolerant(folder, PRIVATE_DIR)


def remove_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
