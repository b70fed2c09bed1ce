"""VM selection: names, tags, exclusions, disk filter and the disk type rules (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given
from hypothesis import strategies as st

from hcbak.engine.selection import select_disks, select_vms

# Plain records with the attribute names of hcbak.hypercore.records (selection is pure
# and only reads these attributes).


@dataclass
class Disk:
    uuid: str
    type: str = "VIRTIO_DISK"
    capacity: int = 1 << 20
    slot: int = 0
    disable_snapshotting: bool = False


@dataclass
class VM:
    uuid: str
    name: str
    tags: list[str] = field(default_factory=list)
    disks: list[Disk] = field(default_factory=list)
    source_vm_uuid: str = ""

    @property
    def is_replica(self) -> bool:
        return bool(self.source_vm_uuid)


@dataclass
class Job:
    vms: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    disks: list[str] = field(default_factory=list)


def cluster() -> list[VM]:
    return [
        VM("u-web", "web01", ["prod", "nightly"], [Disk("d1", slot=0), Disk("d2", slot=1)]),
        VM("u-db", "db01", ["nightly"], [Disk("d3")]),
        VM("u-scratch", "scratch", ["nightly"], [Disk("d4")]),
        VM("u-worker", "hcbak-worker", ["nightly"], [Disk("d5")]),
    ]


def test_names_and_tags_minus_exclusions_in_name_order() -> None:
    job = Job(vms=["web01"], tags=["nightly"], exclude=["scratch"])
    sel = select_vms(cluster(), job, worker_vm_uuid="u-worker")
    assert [t.name for t in sel.targets] == ["db01", "web01"]
    assert sel.missing == []
    assert any("worker" in w for w in sel.warnings)


def test_vm_named_by_uuid_is_selected_and_unknown_name_is_missing() -> None:
    sel = select_vms(cluster(), Job(vms=["u-db", "ghost"]))
    assert [t.name for t in sel.targets] == ["db01"]
    assert sel.missing == ["ghost"]


def test_tag_matching_nothing_is_a_warning() -> None:
    sel = select_vms(cluster(), Job(vms=["db01"], tags=["nope"]))
    assert [t.name for t in sel.targets] == ["db01"]
    assert sel.warnings == ["tag 'nope' matches no VM"]


def test_cdrom_skipped_silently_snapshot_disabled_skipped_with_warning_nvram_kept() -> None:
    vm = VM(
        "u",
        "uefi01",
        disks=[
            Disk("a", slot=0),
            Disk("cd", type="IDE_CDROM", slot=1),
            Disk("nosnap", slot=2, disable_snapshotting=True),
            Disk("nv", type="NVRAM", slot=-1, capacity=540672),
            Disk("tpm", type="VTPM", slot=-1),
        ],
    )
    target = select_disks(vm, [])
    assert sorted(d.uuid for d in target.disks) == ["a", "nv", "tpm"]
    reasons = {s.uuid: (s.reason, s.warning) for s in target.skipped}
    assert reasons["cd"][1] is False and "CD-ROM" in reasons["cd"][0]
    assert reasons["nosnap"] == ("snapshots disabled on this disk", True)


def test_disk_filter_by_slot_keeps_uefi_state_disks() -> None:
    vm = VM("u", "v", disks=[Disk("a", slot=0), Disk("b", slot=1), Disk("nv", "NVRAM", slot=-1)])
    target = select_disks(vm, ["1"])
    assert sorted(d.uuid for d in target.disks) == ["b", "nv"]


def test_disk_filter_naming_no_data_disk_of_a_vm_warns_for_each_disk_left_out() -> None:
    vm = VM("u", "v", disks=[Disk("a", slot=0), Disk("b", slot=1), Disk("nv", "NVRAM", slot=-1)])
    target = select_disks(vm, ["7"])
    assert [d.uuid for d in target.disks] == ["nv"]
    assert [(s.uuid, s.warning) for s in target.skipped] == [("a", True), ("b", True)]
    assert "matches no data disk" in target.skipped[0].reason
    partial = select_disks(vm, ["0"])  # a filter that picks some disk: the rest quietly
    assert [(s.uuid, s.warning) for s in partial.skipped] == [("b", False)]


@given(st.lists(st.sampled_from(["0", "1", "2", "VIRTIO_DISK", "IDE_DISK", "9"]), max_size=3))
def test_a_vm_with_data_disks_never_loses_them_all_without_a_warning(wanted: list[str]) -> None:
    vm = VM("u", "v", disks=[Disk("a", slot=0), Disk("b", "IDE_DISK", slot=1)])
    target = select_disks(vm, wanted)
    assert target.disks or all(s.warning for s in target.skipped)


def test_replica_flag_comes_from_source_vm() -> None:
    vms = [VM("r", "replica01", disks=[Disk("x")], source_vm_uuid="src")]
    (target,) = select_vms(vms, Job(vms=["replica01"])).targets
    assert target.replica


names = st.lists(st.sampled_from(["web01", "db01", "scratch", "ghost"]), max_size=4)


@given(names, st.lists(st.sampled_from(["prod", "nightly", "none"]), max_size=3), names)
def test_excluded_vms_are_never_selected(vms: list[str], tags: list[str], ex: list[str]) -> None:
    sel = select_vms(cluster(), Job(vms=vms, tags=tags, exclude=ex))
    chosen = {t.name for t in sel.targets}
    assert not chosen & set(ex)
    assert set(vms) - {"ghost"} - set(ex) <= chosen
    assert len(chosen) == len(sel.targets)
