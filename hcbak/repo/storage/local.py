"""The folder backend: a repository on a local or network (NFS/SMB) folder.

Keys are file paths relative to the root. Every durability rule of docs/format.md
("Commit order and crash safety") lives here: a new object is written to a private temp
name (`.tmp-*`) in its target folder, length-checked and fsynced, then renamed into
place and the folder fsynced. Write-once names (`if_absent`, packs) are hard-linked
into place: link() fails if the name exists, atomically, on NFS too, so an existing
object is never replaced. Missing folders (lost by copies that drop empty folders) are
made on the first write into them.

Append-only (`append_only=True`, docs/operations.md "Append-only folders"): the folders
of committed objects may forbid removing or renaming entries (chattr +a) and their files
may belong to root once sealed, so this store never deletes or replaces an object
outside `locks/` (AppendOnlyError, exit 2) and writes every temp file in `locks/`, the
one folder the backup user may remove entries from, then hard-links it into place.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

from hcbak.errors import AppendOnlyError, RepoError, RepoLocationError
from hcbak.repo import fsio
from hcbak.repo.storage.base import ObjectMissingError, ReadOnlyStoreError, Spool

# The folders of a new repository (write paths make them again when missing).
LAYOUT = ("packs", "index", "points", "locks", "damaged")
FANOUT = "packs/"  # keys packs/<2 hex>/<id>: one folder level more
READ_ONLY_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
LOCKS_DIR = "locks"  # leases: the only folder whose entries an append-only store removes


class LocalStore:
    """An ObjectStore on a folder (see the module docstring)."""

    def __init__(self, root: Path | str, *, append_only: bool = False) -> None:
        self.root = Path(root)
        self.local_root: Path | None = self.root
        self.location = str(self.root)
        self.append_only = append_only

    def __repr__(self) -> str:
        return f"LocalStore({self.location!r})"

    def path(self, key: str) -> Path:
        """The file of `key` (keys never contain "..": they are made by hcbak)."""
        return self.root / key

    # --- reading ------------------------------------------------------------------------
    def get(self, key: str) -> bytes:
        path = self.root / key
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise ObjectMissingError(f"{key} is missing in repository {self.location}")
        except OSError as exc:
            raise RepoError(f"could not read {path}: {exc.strerror or exc}") from exc

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        path = self.root / key
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise ObjectMissingError(f"{key} is missing in repository {self.location}")
        except OSError as exc:
            raise RepoError(f"could not read {path}: {exc.strerror or exc}") from exc
        try:
            # A length read from damaged bytes may be absurd: never ask for more than
            # the file holds (pread allocates the whole length first).
            length = max(0, min(length, os.fstat(fd).st_size - offset))
            parts = []
            while length > 0:
                got = os.pread(fd, length, offset)
                if not got:
                    break
                parts.append(got)
                offset, length = offset + len(got), length - len(got)
            return parts[0] if len(parts) == 1 else b"".join(parts)
        except OSError as exc:
            raise RepoError(f"could not read {path}: {exc.strerror or exc}") from exc
        finally:
            os.close(fd)

    def size(self, key: str) -> int | None:
        try:
            return os.stat(self.root / key).st_size
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RepoError(f"could not read {self.root / key}: {exc.strerror or exc}") from exc

    def list_sizes(self, prefix: str) -> Iterator[tuple[str, int]]:
        for key in self.list(prefix):
            size = self.size(key)
            if size is not None:  # deleted since the listing
                yield key, size

    def list(self, prefix: str) -> Iterator[str]:
        """Keys under `prefix`, sorted. A prefix ending in "/" is a folder; otherwise the
        last part is a name prefix within its folder. Only the layout's folders are
        descended into: anything else where a key belongs (a directory in index/, say)
        is listed as a key, so reading it fails loudly instead of hiding it."""
        folder, _, start = prefix.rpartition("/")
        base = folder + "/" if folder else ""
        for name in _visible_names(self.root / folder, self.root):
            if not name.startswith(start):
                continue
            key = base + name
            if _is_layout_folder(key) and (self.root / key).is_dir():
                yield from self.list(key + "/")
            else:
                yield key

    # --- writing ------------------------------------------------------------------------
    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> bool:
        final = self.root / key
        if not if_absent:
            self._refuse_rewrite(key, "replace")
        try:
            self._ensure_folder(final.parent)
            if not if_absent:
                fsio.atomic_write(final, data)
                return True
            if final.exists():  # the usual answer for a write-once name: no temp file
                return False
            return self._link_new(final, data)
        except RepoError:
            raise
        except OSError as exc:
            raise self._write_error(exc, str(final)) from exc

    def _link_new(self, final: Path, data: bytes) -> bool:
        tmp = self._temp_for(final)
        try:
            fd = fsio.open_private(tmp, os.O_WRONLY | os.O_EXCL)
            try:
                if fsio.write_all(fd, [data]) != len(data) or os.fstat(fd).st_size != len(data):
                    raise RepoError(f"short write to {tmp}")
                fsio._fsync(fd)
            finally:
                os.close(fd)
            linked = _link_into_place(tmp, final)
            self._drop_temp(tmp)
            return linked
        finally:
            fsio.remove_quietly(tmp)

    def spool(self, prefix: str) -> Spool:
        folder = self.root / prefix.rstrip("/")
        try:
            self._ensure_folder(folder)
            return Spool(self._temp_for(folder / "spool"), flush_early=True)
        except OSError as exc:
            raise self._write_error(exc, f"a new file in {folder}") from exc

    def commit_spool(self, spool: Spool, key: str) -> bool:
        """fsync, then link into place (write-once) and fsync the folder; the spool's
        temp name is removed whatever happened."""
        final = self.root / key
        try:
            spool.close(sync=True)
            fsio.make_private_dir(final.parent)
            linked = _link_into_place(spool.path, final)
            self._drop_temp(spool.path)
            return linked
        except OSError as exc:
            raise self._write_error(exc, str(final)) from exc
        finally:
            fsio.remove_quietly(spool.path)

    def delete(self, key: str) -> None:
        self._refuse_rewrite(key, "delete")
        try:
            fsio.remove_durably(self.root / key)
        except OSError as exc:
            raise self._write_error(exc, f"delete {self.root / key}") from exc

    def remove_temp(self) -> int:
        removed = 0
        for folder, dirs, files in os.walk(self.root):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                if name.startswith(fsio.TMP_PREFIX):
                    fsio.remove_quietly(Path(folder) / name)
                    removed += 1
        return removed

    def create(self) -> None:
        root = self.root
        if root.exists():
            if not root.is_dir():
                raise RepoLocationError(f"{root} exists and is not a folder")
            if (root / "config").is_file():
                raise RepoLocationError(f"{root} is already an hcbak repository")
            entries = list(root.iterdir())
            if any(not (p.name in LAYOUT and p.is_dir()) or any(p.iterdir()) for p in entries):
                raise RepoLocationError(
                    f"{root} is not empty and is not an hcbak repository",
                    hint="choose an empty or new folder",
                )
        with fsio.translate_os_errors(f"repository {root}"):
            fsio.make_private_dir(root, parents=True)
            for sub in LAYOUT:
                fsio.make_private_dir(root / sub)
            fsio.fsync_dir(root)

    # --- helpers ------------------------------------------------------------------------
    def _temp_for(self, final: Path) -> Path:
        """A private temp name for the object `final`: beside it, or in `locks/` when
        append-only (the folder of `final` may not let its entries be removed; `locks/`
        is on the same filesystem, so the temp can be hard-linked into place)."""
        if not self.append_only:
            return fsio.tmp_path_for(final)
        locks = self.root / LOCKS_DIR
        self._ensure_folder(locks)
        return fsio.tmp_path_for(locks / final.name)

    def _drop_temp(self, tmp: Path) -> None:
        """Remove a temp name once its object is in place. A folder that refuses (EPERM:
        `chattr +a`, hardened by `repo harden`) while this store is not append-only
        would keep a second, writable name of every object: refuse loudly instead."""
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EPERM:  # only EPERM is "entries stay"; EACCES is not
                return  # left for prune's cleanup (a network hiccup)
            raise AppendOnlyError(
                f"repository folder {tmp.parent} does not let hcbak remove its temp file "
                f"{tmp.name} ({exc.strerror}): an append-only folder needs "
                "`append_only: true` in the repository's entry",
                hint="`hcbak repo add NAME --path FOLDER --append-only --force` adopts it so",
            ) from exc

    def _refuse_rewrite(self, key: str, what: str) -> None:
        """The store's own guard (commands refuse earlier, naming themselves)."""
        if self.append_only and key.partition("/")[0] != LOCKS_DIR:
            raise AppendOnlyError(
                f"repository {self.location} is append-only: refusing to {what} {key}",
                hint=APPEND_ONLY_HINT,
            )

    def _ensure_folder(self, folder: Path) -> None:
        """Make a missing folder inside the repository (0700), never the root itself: a
        repository folder deleted under a run must not come back as an empty one."""
        if folder.is_dir():
            return
        if not self.root.is_dir():
            raise _root_gone(self.root)
        fsio.make_private_dir(folder, parents=True)

    def _write_error(self, exc: OSError, what: str) -> RepoError:
        if exc.errno in READ_ONLY_ERRNOS:
            return ReadOnlyStoreError(f"cannot write {what}: {exc.strerror or exc}")
        return fsio.typed_os_error(exc, what)


APPEND_ONLY_HINT = (
    "run it on a trusted host with write access to the folder, from a config entry "
    'without append_only; see "Append-only folders" in docs/operations.md'
)


def refuse_if_append_only(store: object, command: str) -> None:
    """AppendOnlyError (exit 2) before `command` deletes or rewrites anything, when the
    store is an append-only folder (checked up front: never half a prune)."""
    if getattr(store, "append_only", False):
        raise AppendOnlyError(
            f"repository {getattr(store, 'location', '?')} is append-only: {command} "
            "deletes or rewrites its data",
            hint=APPEND_ONLY_HINT,
        )


def _root_gone(root: Path) -> RepoError:
    return RepoError(f"repository folder {root} is gone: No such file or directory")


def _is_layout_folder(key: str) -> bool:
    """A folder of the format's layout: a top-level folder, or a pack fan-out folder
    (packs/<2 hex>/)."""
    return "/" not in key or (key.startswith(FANOUT) and key.count("/") == 1)


def _visible_names(folder: Path, root: Path) -> list[str]:
    """The sorted names in a folder without temp and hidden files ([] when a folder
    inside the repository is missing; an error when the repository folder itself is
    gone, which must never read as "no points", "no locks")."""
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        if not root.is_dir():
            raise _root_gone(root) from None
        return []
    except OSError as exc:
        raise RepoError(f"could not list {folder}: {exc.strerror or exc}") from exc
    return sorted(name for name in names if not name.startswith("."))


def _link_into_place(tmp: Path, final: Path) -> bool:
    """Hard-link a complete, fsynced temp file to its final name and fsync the folder;
    False (nothing changed) when the name exists. The caller removes the temp name."""
    try:
        os.link(tmp, final)
    except FileExistsError:
        return False
    fsio.fsync_dir(final.parent)
    return True
