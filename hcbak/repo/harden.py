"""`hcbak repo harden`: let the operating system keep an append-only folder append-only.

hcbak cannot stop its own user from running `rm`; the folder's owner can. Run as root on
the host whose disk holds the folder (the NFS server for an NFS share), this makes the
backup user able to add objects and read them, never to remove or change committed ones:

- every folder is owned by root, group GROUP (the backup user's), mode 1770 (the root
  folder 0750: nothing is ever added there after `repo add`), and carries the
  append-only attribute (`chattr +a`: entries can be added, never removed or renamed,
  not even by their owner) - except `locks/`, where leases and hcbak's temp files come
  and go (docs/format.md, "Append-only folders");
- every committed file (outside `locks/`) is *sealed*: owned by root, mode 0440, and
  immutable (`chattr +i`). Until it is sealed, a file the backup user wrote is still
  its own and could be rewritten: run harden again from a timer (every few minutes)
  to seal new files; the sticky bit keeps a sealed file safe even on a filesystem
  without these attributes.

Nothing is followed: symlinks and files with more than one link (a temp name in
`locks/` still pointing at a just-committed object, or a link planted by someone else)
are left for a later run. `lift` undoes the attributes (and makes every folder root's
alone) so a trusted maintenance run can forget and prune; harden again afterwards.
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from hcbak.errors import RepoError, UsageError
from hcbak.repo.storage.local import FANOUT, LAYOUT, LOCKS_DIR

FS_IOC_GETFLAGS = 0x80086601  # _IOR('f', 1, long); the kernel reads and writes an int
FS_IOC_SETFLAGS = 0x40086602
FS_IMMUTABLE_FL = 0x10
FS_APPEND_FL = 0x20
NO_ATTRIBUTES = frozenset({errno.ENOTTY, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS})

FOLDER_MODE = 0o1770  # group writable (add), sticky (only root removes root's files)
ROOT_MODE = 0o750
LOCKS_MODE = 0o770
SEALED_MODE = 0o440


@dataclass
class HardenReport:
    folders: int = 0
    sealed: int = 0  # files sealed by this run
    already_sealed: int = 0
    skipped: list[str] = field(default_factory=list)  # left for a later run, and why
    attributes: bool = True  # the filesystem keeps chattr +a/+i


def harden(root: Path, gid: int) -> HardenReport:
    """Make `root` append-only for group `gid` and seal its committed files (root only;
    idempotent: run again to seal what was added since)."""
    _check(root)
    report = HardenReport()
    for sub in (*LAYOUT, *(f"{FANOUT}{i:02x}" for i in range(256))):
        (root / sub).mkdir(mode=0o700, exist_ok=True)
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        rel = here.relative_to(root)
        in_locks = rel.parts[:1] == (LOCKS_DIR,)
        if rel == Path(LOCKS_DIR):
            _folder(here, gid, LOCKS_MODE, append=False, report=report)
        elif not in_locks:
            _folder(here, gid, ROOT_MODE if here == root else FOLDER_MODE, append=True,
                    report=report)  # fmt: skip
        report.folders += 1
        if in_locks:
            dirs[:] = []
            continue
        for name in files:
            _seal(here / name, gid, report)
    return report


def lift(root: Path) -> HardenReport:
    """Remove the attributes and give every folder to root alone (0700: the backup user
    can reach nothing, not even files it still owns), so a maintenance run as root can
    delete; `harden` again afterwards. Files keep owner and mode, symlinks and files
    with several links are left alone."""
    _check(root)
    report = HardenReport()
    for folder, _dirs, files in os.walk(root):
        here = Path(folder)
        _folder(here, 0, 0o700, append=False, report=report)
        report.folders += 1
        for name in files:
            _unseal(here / name, report)
    return report


def _unseal(path: Path, report: HardenReport) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        report.skipped.append(f"{path}: {exc.strerror}")
        return
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
            report.skipped.append(f"{path}: not a file with one link")
            return
        flags = _get_flags(fd)
        if flags is not None and flags & (FS_IMMUTABLE_FL | FS_APPEND_FL):
            _ioctl_set(fd, flags & ~(FS_IMMUTABLE_FL | FS_APPEND_FL))
    finally:
        os.close(fd)


def _check(root: Path) -> None:
    if os.geteuid() != 0:
        raise UsageError(
            "hcbak repo harden runs as root on the host that holds the folder",
            hint="the backup user must not be able to undo it",
        )
    if not (root / "config").is_file():
        raise UsageError(f"{root} is not an hcbak repository folder")


def _folder(path: Path, gid: int, mode: int, *, append: bool, report: HardenReport) -> None:
    """A folder owned by root:gid with `mode`, append-only or not. An append-only
    folder refuses chown/chmod even to root: the attribute is lifted for the change."""
    flags_ = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags_)
    try:
        st = os.fstat(fd)
        flags = _get_flags(fd)
        if flags is None:
            report.attributes = False
        if (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) != (0, gid, mode):
            if flags is not None and flags & (FS_APPEND_FL | FS_IMMUTABLE_FL):
                _ioctl_set(fd, flags & ~(FS_APPEND_FL | FS_IMMUTABLE_FL))
            os.fchown(fd, 0, gid)
            os.fchmod(fd, mode)
        if flags is not None:
            wanted = flags | FS_APPEND_FL if append else flags & ~FS_APPEND_FL
            _ioctl_set(fd, wanted & ~FS_IMMUTABLE_FL)
    finally:
        os.close(fd)


def _seal(path: Path, gid: int, report: HardenReport) -> None:
    """Give a committed file to root, read-only for the group, immutable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:  # a symlink (ELOOP), a fifo, gone meanwhile
        report.skipped.append(f"{path}: {exc.strerror}")
        return
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            report.skipped.append(f"{path}: not a regular file")
            return
        if st.st_nlink > 1:
            report.skipped.append(f"{path}: {st.st_nlink} links (sealed once it has one)")
            return
        flags = _get_flags(fd)
        if (
            st.st_uid == 0
            and st.st_gid == gid
            and stat.S_IMODE(st.st_mode) == SEALED_MODE
            and (flags is None or flags & FS_IMMUTABLE_FL)
        ):
            report.already_sealed += 1
            report.attributes = report.attributes and flags is not None
            return
        if flags is not None and flags & FS_IMMUTABLE_FL:
            _ioctl_set(fd, flags & ~FS_IMMUTABLE_FL)  # chown/chmod refuse on +i
        os.fchown(fd, 0, gid)
        os.fchmod(fd, SEALED_MODE)
        if flags is None:
            report.attributes = False
        else:
            _ioctl_set(fd, (flags | FS_IMMUTABLE_FL) & ~FS_APPEND_FL)
        report.sealed += 1
    finally:
        os.close(fd)


def _get_flags(fd: int) -> int | None:
    """The inode flags, None where the filesystem has none (tmpfs, NFS client)."""
    buf = array.array("i", [0])
    try:
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, buf, True)
    except OSError as exc:
        if exc.errno in NO_ATTRIBUTES:
            return None
        raise RepoError(f"cannot read the attributes of a repository file: {exc.strerror}")
    return buf[0]


def _ioctl_set(fd: int, flags: int) -> None:
    fcntl.ioctl(fd, FS_IOC_SETFLAGS, array.array("i", [flags]), True)


def _set_flags(path: Path, flag: int, *, on: bool, report: HardenReport) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        flags = _get_flags(fd)
        if flags is None:
            report.attributes = False
            return
        new = flags | flag if on else flags & ~flag
        if new != flags:
            _ioctl_set(fd, new)
    finally:
        os.close(fd)
