"""File-system primitives every repository file goes through.

One atomic-write helper (restic's local backend pattern): temp name in the same folder,
write, check the length, fsync, `os.replace`, fsync the folder. Content-addressed files
are write-once: we never rename over an existing one (SMB/NFS refuse or misbehave,
borg #5253). fsync of a directory and chmod fail with EPERM/ENOTSUP/EINVAL/ENOSYS on
some network filesystems (restic #1756, #5342); those errnos, and only those, are
tolerated. ENOSPC/EDQUOT become `NoSpaceError` with the temp file removed.

Everything hcbak writes is private whatever the umask: files 0600, folders 0700. An
unencrypted repository is the VMs' disks in the clear and an encrypted one holds the
wrapped key; neither is for other local users. The mode is asked for at creation
(never a window where the file is readable) and set again with chmod, so a umask that
masks the owner's own bits cannot make a file unusable either.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hcbak.errors import NoSpaceError, RepoError

# errnos that network filesystems return for fsync(dir)/chmod although the data is safe.
TOLERATED_ERRNOS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS})
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
TMP_PREFIX = ".tmp-"
PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700

# Indirection points so tests can make them raise (see tests/repo/test_fsio.py).
_fsync = os.fsync
_fdatasync = os.fdatasync
_chmod = os.chmod
_fchmod = os.fchmod


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


def open_private(path: Path | str, flags: int) -> int:
    """`os.open` of a new or existing file with O_CREAT and mode 0600 whatever the umask."""
    fd = os.open(path, flags | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), PRIVATE_FILE)
    try:
        fchmod_tolerant(fd, PRIVATE_FILE)
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


def tmp_path_for(final: Path) -> Path:
    return final.parent / f"{TMP_PREFIX}{final.name[:24]}-{os.urandom(6).hex()}"


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


def atomic_write(final: Path, data: bytes, *, write_once: bool = False) -> bool:
    """Write `data` to `final` atomically and durably.

    With `write_once` (content-addressed names) an existing file is left alone and
    False is returned: equal names mean equal content. Returns True when written.
    """
    if write_once and final.exists():
        return False
    tmp = tmp_path_for(final)
    try:
        with os.fdopen(open_private(tmp, os.O_WRONLY | os.O_EXCL), "wb") as fh:
            fh.write(data)
            fh.flush()
            if fh.tell() != len(data) or os.fstat(fh.fileno()).st_size != len(data):
                raise RepoError(f"short write to {tmp}")
            _fsync(fh.fileno())
        commit_tmp(tmp, final, write_once=write_once)
    except OSError as exc:
        remove_quietly(tmp)
        raise_os_error(exc, str(final))
    except BaseException:
        remove_quietly(tmp)
        raise
    return True


def commit_tmp(tmp: Path, final: Path, *, write_once: bool) -> bool:
    """Rename a fully written, fsynced temp file into place and fsync the folder."""
    if write_once and final.exists():
        remove_quietly(tmp)
        return False
    os.replace(tmp, final)
    fsync_dir(final.parent)
    return True


def remove_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


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
