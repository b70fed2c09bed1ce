"""Property: random guest writes and snapshots vs a bytearray reference model.

Snapshot contents must equal the reference copy taken at snapshot time, and
snapDiff(a, b) must be exactly the merged byte intervals written between them.
Runs on the model directly (no HTTPS) so hypothesis can try many histories quickly.
"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from hcbak.sim.disks import merge_intervals
from hcbak.sim.faults import Faults
from hcbak.sim.model import ClusterModel

SIZE = 64 << 10

write_op = st.tuples(
    st.just("w"), st.integers(0, SIZE - 1), st.integers(1, 9000), st.integers(0, 255)
)
snap_op = st.tuples(st.just("s"), st.just(0), st.just(0), st.just(0))
delete_op = st.tuples(st.just("d"), st.integers(0, 50), st.just(0), st.just(0))
histories = st.lists(st.one_of(write_op, write_op, snap_op, delete_op), max_size=40)


def _model(root: Path) -> ClusterModel:
    return ClusterModel(root, Faults(1, lambda i, m: None), task_delay=0, nodes=1)


@settings(max_examples=60, deadline=None)
@given(histories)
def test_snapshots_and_snap_diff_match_reference_model(
    ops: list[tuple[str, int, int, int]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model = _model(Path(tmp))
        vm = model.create_vm("vm", [SIZE])
        disk = model.vm_disks(vm)[0]["uuid"]
        live = bytearray(SIZE)
        frozen: dict[int, tuple[str, bytes]] = {}  # serial -> (snapshot uuid, content)
        writes: list[tuple[int, int, int]] = []  # (epoch serial, lo, hi)
        serial = 0
        for kind, a, b, c in ops:
            if kind == "w":
                data = bytes([c]) * min(b, SIZE - a)
                model.write(disk, a, data)
                live[a : a + len(data)] = data
                writes.append((serial, a, a + len(data)))
            elif kind == "s":
                serial += 1
                snap = f"snap-{serial}"
                model.take_snapshot(snap, vm, "l", "USER", False)
                frozen[serial] = (snap, bytes(live))
            elif frozen:
                victim = sorted(frozen)[a % len(frozen)]
                model.drop_snapshot(frozen.pop(victim)[0])

        assert model.store.live_path(disk).read_bytes() == bytes(live)
        for snap, content in frozen.values():
            assert model.read_snapshot(snap, disk, 0, SIZE) == content
        points = [0, *sorted(frozen)]
        for i, lo in enumerate(points):
            for hi in [*points[i + 1 :], 0]:
                expected = merge_intervals(
                    (s, e) for ep, s, e in writes if ep >= lo and (hi == 0 or ep < hi)
                )
                assert model.snap_diff(disk, lo, hi) == expected, (lo, hi)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 1000)), max_size=30))
def test_merge_intervals_covers_exactly_the_union(pairs: list[tuple[int, int]]) -> None:
    merged = merge_intervals(pairs)
    covered = {x for lo, hi in pairs for x in range(lo, hi)}
    assert {x for lo, hi in merged for x in range(lo, hi)} == covered
    assert all(a[1] < b[0] for a, b in itertools.pairwise(merged))
    assert all(lo < hi for lo, hi in merged)
