"""The external record sorter (hcbak/repo/extsort.py): sorted output whether or not it
spilled to bucket files, repeats dropped with `unique`, nothing left behind."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from hcbak.repo.extsort import RecordSorter

SIZE = 6
records = st.lists(st.binary(min_size=SIZE, max_size=SIZE), max_size=300)


@settings(max_examples=60, deadline=None)
@given(records, st.integers(min_value=1, max_value=50), st.booleans())
def test_records_come_back_sorted(rs: list[bytes], in_memory: int, unique: bool) -> None:
    with tempfile.TemporaryDirectory() as d:
        with RecordSorter(Path(d), SIZE, unique=unique, in_memory=in_memory) as sorter:
            for i in range(0, len(rs), 7):
                sorter.add(rs[i : i + 7])
            got = list(sorter.records())
            if len(set(rs) if unique else rs) > in_memory:
                assert sorter.spilled  # so the bucket files were what got sorted
        assert got == (sorted(set(rs)) if unique else sorted(rs))
        assert list(Path(d).iterdir()) == []  # the buckets are gone


def test_a_spill_keeps_memory_to_one_batch_and_repeats_across_batches_are_dropped(
    tmp_path: Path,
) -> None:
    rnd = random.Random(5)
    ids = [rnd.randbytes(16) for _ in range(3000)]
    sorter = RecordSorter(tmp_path, 16, unique=True, in_memory=100)
    for _ in range(3):  # three "points" of one disk: the same ids again and again
        sorter.add(ids)
        assert len(sorter._memory) <= 100  # spilled as it went
    assert sorter.spilled
    assert list(sorter.records()) == sorted(ids)
    sorter.close()
    assert list(tmp_path.iterdir()) == []


def test_chunks_concatenate_to_the_sorted_records(tmp_path: Path) -> None:
    rnd = random.Random(7)
    rs = [rnd.randbytes(28) for _ in range(2000)] * 2  # repeated entries are kept
    with RecordSorter(tmp_path, 28, in_memory=500) as sorter:
        sorter.add(rs)
        assert sorter.count == 4000
        assert b"".join(sorter.chunks()) == b"".join(sorted(rs))


def test_the_buckets_of_a_killed_sorter_are_removed_by_the_next_one(tmp_path: Path) -> None:
    """kill -9 during a prune leaves its bucket folder (close never runs): up to ~1 GiB
    at 10 M blocks. The next sorter that spills there removes it, and never a live
    process's folder."""
    import os
    import signal
    import subprocess
    import sys

    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from pathlib import Path\n"
            "from hcbak.repo.extsort import RecordSorter\n"
            "s = RecordSorter(Path(sys.argv[1]), 16, in_memory=1)\n"
            "s.add([bytes([i]) * 16 for i in range(10)])\n"
            "print('spilled', flush=True)\n"
            "time.sleep(60)\n",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "spilled\n"
        [left] = [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-sort-")]
        assert f"-{child.pid}-" in left.name and child.poll() is None  # alive, mid-sort
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert left.is_dir()  # nobody cleaned up after the kill
    with RecordSorter(tmp_path, 16, in_memory=1) as live:
        live.add([b"a" * 16, b"b" * 16])  # spills: this process's own folder
        [mine] = [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-sort-")]
        assert not left.exists() and f"-{os.getpid()}-" in mine.name
        with RecordSorter(tmp_path, 16, in_memory=1) as other:
            other.add([b"c" * 16, b"d" * 16])
            assert mine.exists()  # a live process's buckets are never touched
