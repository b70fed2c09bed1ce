"""The ObjectStore contract (hcbak/repo/storage/base.py), run against every backend.

`store_factory` makes a fresh, empty store of the backend under test. A new backend
adds one parameter to `BACKENDS` and one branch to `store_factory` (skipped with a
visible reason where its server cannot run). Cases that only a folder can show (temp
names, hard links, file modes) are at the end, for the local backend only.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hcbak.errors import RepoError, UsageError
from hcbak.repo.pack import (
    PackReader,
    PackWriter,
    frame_parts,
    iter_pack_frames,
    pack_key,
    read_trailer,
)
from hcbak.repo.storage import (
    LocalStore,
    ObjectMissingError,
    ObjectStore,
    ReadOnlyStoreError,
    open_store,
)

BACKENDS = ["local", "s3"]  # s3: the session's Ceph RGW (tests/conftest.py), else skipped
StoreFactory = Callable[[], ObjectStore]


@pytest.fixture(params=BACKENDS)
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    made = 0

    def local() -> ObjectStore:
        nonlocal made
        made += 1
        store = LocalStore(tmp_path / f"repo{made}")
        store.create()
        return store

    def s3() -> ObjectStore:
        from hcbak.config.s3_target import S3Keys, S3Target
        from hcbak.repo.storage.s3 import S3Options, S3Store

        nonlocal made
        made += 1
        bucket = request.getfixturevalue("s3_bucket")
        keys = S3Keys(bucket.env["AWS_ACCESS_KEY_ID"], bucket.env["AWS_SECRET_ACCESS_KEY"])
        options = S3Options(endpoint=bucket.endpoint, region="us-east-1", keys=keys,
                            spool_dir=tmp_path / "spool")  # fmt: skip
        store = S3Store(S3Target(bucket.name, f"repo{made}"), options)
        store.create()
        return store

    factories = {"local": local, "s3": s3}
    yield factories[request.param]


@pytest.fixture
def store(store_factory: StoreFactory) -> ObjectStore:
    return store_factory()


def test_a_store_is_an_object_store(store: ObjectStore) -> None:
    assert isinstance(store, ObjectStore)
    assert store.location


def test_put_then_get_and_size(store: ObjectStore) -> None:
    assert store.size("points/p1") is None
    assert store.put("points/p1", b"manifest bytes") is True
    assert store.get("points/p1") == b"manifest bytes"
    assert store.size("points/p1") == len(b"manifest bytes")
    assert store.put("config", b"") is True
    assert store.get("config") == b""
    assert store.size("config") == 0


def test_a_missing_object_is_object_missing_error_a_repo_error(store: ObjectStore) -> None:
    with pytest.raises(ObjectMissingError) as caught:
        store.get("points/nope")
    assert isinstance(caught.value, RepoError)
    with pytest.raises(ObjectMissingError):
        store.get_range("packs/ab/nope", 0, 10)


def test_put_replaces_but_if_absent_keeps_the_first(store: ObjectStore) -> None:
    store.put("locks/l1", b"first")
    assert store.put("locks/l1", b"second") is True
    assert store.get("locks/l1") == b"second"
    assert store.put("locks/l1", b"third", if_absent=True) is False
    assert store.get("locks/l1") == b"second"
    assert store.put("locks/l2", b"new", if_absent=True) is True
    assert store.get("locks/l2") == b"new"


def test_if_absent_has_exactly_one_winner_among_racing_writers(store: ObjectStore) -> None:
    results: list[bool] = []
    start = threading.Barrier(8)

    def race(i: int) -> None:
        start.wait()
        results.append(store.put("locks/race", f"writer {i}".encode(), if_absent=True))

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    assert store.get("locks/race") in {f"writer {i}".encode() for i in range(8)}


def test_get_range_reads_a_slice_and_stops_at_the_end(store: ObjectStore) -> None:
    data = bytes(range(256)) * 64
    store.put("index/seg", data)
    assert store.get_range("index/seg", 0, 16) == data[:16]
    assert store.get_range("index/seg", 1000, 3000) == data[1000:4000]
    assert store.get_range("index/seg", len(data) - 10, 100) == data[-10:]
    assert store.get_range("index/seg", 10, 1 << 60) == data[10:]  # a damaged length


def test_list_is_sorted_nested_and_by_prefix(store: ObjectStore) -> None:
    for key in ("packs/ff/ff01", "packs/00/0002", "packs/00/0001", "points/b", "points/a"):
        store.put(key, b"x")
    store.put("index/i1", b"x")
    assert list(store.list("packs/")) == ["packs/00/0001", "packs/00/0002", "packs/ff/ff01"]
    assert list(store.list("points/")) == ["points/a", "points/b"]
    assert list(store.list("packs/00/")) == ["packs/00/0001", "packs/00/0002"]
    assert list(store.list("points/a")) == ["points/a"]
    assert list(store.list("damaged/")) == []
    assert list(store.list("nothing-here/")) == []


def test_list_sizes_names_what_list_does_with_each_size(store: ObjectStore) -> None:
    for n, key in enumerate(("packs/ff/ff01", "packs/00/0002", "points/a")):
        store.put(key, b"x" * (n + 1) * 1000)
    assert list(store.list_sizes("packs/")) == [("packs/00/0002", 2000), ("packs/ff/ff01", 1000)]
    assert [k for k, _ in store.list_sizes("")] == list(store.list(""))
    assert list(store.list_sizes("damaged/")) == []


def test_delete_is_final_and_a_missing_key_is_fine(store: ObjectStore) -> None:
    store.put("points/p", b"x")
    store.delete("points/p")
    assert store.size("points/p") is None
    assert list(store.list("points/")) == []
    store.delete("points/p")
    store.delete("points/never")


def test_a_spool_becomes_the_object_at_its_commit(store: ObjectStore) -> None:
    spool = store.spool("packs/")
    assert spool.write([b"head", b"er-"]) == 7
    spool.write([b"body" * 1000])
    assert spool.size == 7 + 4000
    assert spool.read(0, 7) == b"header-"  # a blob of a pack not yet committed
    assert list(store.list("packs/")) == []  # never visible before the commit
    assert store.commit_spool(spool, "packs/ab/abcd") is True
    assert store.get("packs/ab/abcd") == b"header-" + b"body" * 1000
    assert list(store.list("packs/")) == ["packs/ab/abcd"]
    assert not spool.path.exists()


def test_committing_a_spool_onto_an_existing_key_keeps_it(store: ObjectStore) -> None:
    store.put("packs/ab/abcd", b"first")
    spool = store.spool("packs/")
    spool.write([b"second"])
    assert store.commit_spool(spool, "packs/ab/abcd") is False
    assert store.get("packs/ab/abcd") == b"first"
    assert not spool.path.exists()


def test_a_discarded_spool_leaves_nothing(store: ObjectStore) -> None:
    spool = store.spool("packs/")
    spool.write([b"half a pack"])
    spool.discard()
    assert not spool.path.exists()
    assert list(store.list("")) == []


def test_remove_temp_clears_what_a_crashed_writer_left(store: ObjectStore) -> None:
    spool = store.spool("packs/")  # a writer killed before its commit
    spool.write([b"x" * 1000])
    os.close(spool.fd)
    store.put("points/kept", b"kept")
    store.remove_temp()
    assert list(store.list("")) == ["points/kept"]
    assert store.get("points/kept") == b"kept"


def test_packs_are_written_and_read_through_any_store(store: ObjectStore) -> None:
    """PackWriter spools and commits; the trailer and every frame read back through
    get_range, also when frames straddle PackReader's windows."""
    writer = PackWriter(store)
    frames = []
    for i in range(5):
        block_id, payload = bytes([i + 1]) * 16, os.urandom(1000 + 777 * i)
        parts = frame_parts(block_id, 0, 0, len(payload), [payload])
        offset, length = writer.append(block_id, parts, len(payload))
        frames.append((offset, b"".join(parts)))
        assert writer.read_frame(offset, length) == frames[-1][1]  # before the commit
    pack_id = writer.finish()
    assert list(store.list("packs/")) == [pack_key(pack_id)]
    table = read_trailer(store, pack_id)
    assert [(o, n) for _, o, n, _ in table] == [(o, len(f)) for o, f in frames]
    reader = PackReader(store, pack_id, chunk=1500)  # smaller than most frames
    for offset, frame in reversed(frames):
        assert reader.read(offset, len(frame)) == frame
    assert list(iter_pack_frames(store, pack_id)) == frames  # and its sha256 is its name


def test_an_aborted_pack_leaves_nothing(store: ObjectStore) -> None:
    writer = PackWriter(store)
    writer.append(bytes(16), [b"frame"], 5)
    writer.abort()
    assert list(store.list("")) == []
    with pytest.raises(ObjectMissingError):
        read_trailer(store, "ab" * 32)


def test_open_store_builds_a_folder_store_and_refuses_unknown_schemes(tmp_path: Path) -> None:
    store = open_store(tmp_path / "r")
    assert isinstance(store, LocalStore)
    assert open_store(store) is store
    with pytest.raises(UsageError):
        open_store("ftp://host/repo")


# --- the folder backend only ------------------------------------------------------------
@pytest.fixture
def folder(tmp_path: Path) -> LocalStore:
    store = LocalStore(tmp_path / "repo")
    store.create()
    return store


def test_folder_keys_are_the_files_of_the_format(folder: LocalStore) -> None:
    folder.put("packs/ab/abcd", b"p")
    assert (folder.root / "packs" / "ab" / "abcd").read_bytes() == b"p"
    assert sorted(p.name for p in folder.root.iterdir()) == [
        "damaged",
        "index",
        "locks",
        "packs",
        "points",
    ]


def test_folder_write_once_never_replaces_the_file(folder: LocalStore) -> None:
    folder.put("index/seg", b"first", if_absent=True)
    inode = os.stat(folder.root / "index" / "seg").st_ino
    folder.put("index/seg", b"other", if_absent=True)
    assert os.stat(folder.root / "index" / "seg").st_ino == inode


def test_folder_spools_in_the_target_folder_under_a_temp_name(folder: LocalStore) -> None:
    spool = folder.spool("packs/")
    assert spool.path.parent == folder.root / "packs"
    assert spool.path.name.startswith(".tmp-")
    spool.discard()


def test_folder_files_are_private_and_leave_no_temp_names(folder: LocalStore) -> None:
    old = os.umask(0)
    try:
        folder.put("points/p", b"x", if_absent=True)
        folder.put("config", b"c")
        spool = folder.spool("packs/")
        spool.write([b"y"])
        folder.commit_spool(spool, "packs/cd/cdef")
    finally:
        os.umask(old)
    for rel in ("points/p", "config", "packs/cd/cdef"):
        assert stat.S_IMODE(os.stat(folder.root / rel).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(folder.root / "packs" / "cd").st_mode) == 0o700
    assert list(folder.root.rglob(".tmp-*")) == []


def test_folder_remakes_folders_that_a_copy_dropped(folder: LocalStore) -> None:
    (folder.root / "locks").rmdir()
    assert list(folder.list("locks/")) == []
    assert folder.put("locks/l", b"x", if_absent=True) is True
    assert folder.get("locks/l") == b"x"


def test_folder_deleted_under_a_writer_is_an_error_and_never_comes_back_empty(
    folder: LocalStore,
) -> None:
    folder.put("points/" + "a" * 32, b"point")
    shutil.rmtree(folder.root)
    with pytest.raises(RepoError, match="is gone"):
        list(folder.list("points/"))  # never "no points": retention would read it so
    with pytest.raises(RepoError, match="is gone"):
        folder.put("index/" + "b" * 64, b"segment")
    with pytest.raises(RepoError, match="is gone"):
        folder.spool("packs/")
    assert not folder.root.exists()


def test_folder_create_refuses_a_folder_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file.txt").write_text("mine")
    with pytest.raises(RepoError, match="not empty"):
        LocalStore(tmp_path / "other").create()
    (tmp_path / "plain").write_text("x")
    with pytest.raises(RepoError, match="not a folder"):
        LocalStore(tmp_path / "plain").create()
    (tmp_path / "half" / "packs").mkdir(parents=True)  # empty layout folders are fine
    LocalStore(tmp_path / "half").create()
    (tmp_path / "half" / "packs" / ".tmp-pack-1").write_bytes(b"x")  # but not a file
    with pytest.raises(RepoError, match="not empty"):
        LocalStore(tmp_path / "half").create()


def test_folder_lists_a_stray_directory_as_a_key_so_reading_it_fails(folder: LocalStore) -> None:
    """A directory where a segment belongs is not hidden by the listing: the open of a
    repository whose index cannot be read must fail, not go on with part of it."""
    (folder.root / "index" / "ab12").mkdir()
    assert list(folder.list("index/")) == ["index/ab12"]
    with pytest.raises(RepoError) as caught:
        folder.get("index/ab12")
    assert not isinstance(caught.value, ObjectMissingError)


def test_folder_refused_writes_are_read_only_store_errors(tmp_path: Path) -> None:
    """A read-only bind mount of a repository folder (as root; skipped elsewhere)."""
    src, view = tmp_path / "src", tmp_path / "view"
    LocalStore(src).create()
    view.mkdir()
    bind = subprocess.run(["mount", "--bind", str(src), str(view)], capture_output=True)
    if bind.returncode != 0:
        pytest.skip(f"cannot bind-mount here (needs root): {bind.stderr.decode().strip()}")
    try:
        ro = subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], capture_output=True)
        if ro.returncode != 0:
            pytest.skip(f"cannot remount read-only: {ro.stderr.decode().strip()}")
        store = LocalStore(view)
        for write in (
            lambda: store.put("locks/l", b"x", if_absent=True),
            lambda: store.put("packs/ab/cd", b"x", if_absent=True),
            lambda: store.spool("packs/"),
        ):
            with pytest.raises(ReadOnlyStoreError):
                write()
        assert list(store.list("")) == []
    finally:
        subprocess.run(["umount", "-l", str(view)], check=False)
