"""Pure option logic of restore: VLAN maps and the VM definition sent to the cluster."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hcbak.cli.restore import parse_network_map
from hcbak.engine.restore_vm import VmOptions, vm_definition
from hcbak.errors import UsageError

vlans = st.integers(0, 4094)


@given(st.dictionaries(vlans, vlans, max_size=8))
def test_network_map_parses_what_it_is_given(mapping: dict[int, int]) -> None:
    assert parse_network_map([f"{old}={new}" for old, new in mapping.items()]) == mapping


@pytest.mark.parametrize("item", ["10", "10=", "=20", "a=b", "10:20", "-1=2"])
def test_malformed_network_map_is_a_usage_error(item: str) -> None:
    with pytest.raises(UsageError, match="OLD_VLAN=NEW_VLAN"):
        parse_network_map([item])


def test_a_vlan_mapped_twice_is_refused() -> None:
    with pytest.raises(UsageError, match="twice"):
        parse_network_map(["10=20", "10=30"])


nics = st.lists(
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(["VIRTIO", "RTL8139", "INTEL_E1000"]),
            "vlan": vlans,
            "macAddress": st.from_regex(
                r"7c:4c:58:[0-9a-f]{2}:[0-9a-f]{2}:[0-9a-f]{2}", fullmatch=True
            ),
            "connected": st.booleans(),
        }
    ),
    max_size=4,
)


@given(nics, st.dictionaries(vlans, vlans, max_size=4), st.booleans())
def test_definition_maps_vlans_and_keeps_macs_only_when_asked(
    saved_nics: list[dict[str, Any]], vlan_map: dict[int, int], keep_macs: bool
) -> None:
    vm = {
        "name": "web01",
        "description": "d",
        "tags": "a,b",
        "mem": 1 << 30,
        "numVCPU": 2,
        "machineType": "scale-7.2",
        "netDevs": saved_nics,
        "blockDevs": [{"uuid": "x", "type": "VIRTIO_DISK"}],
    }
    dom = vm_definition(vm, "copy", VmOptions(network_map=vlan_map, keep_macs=keep_macs))
    assert dom["name"] == "copy" and dom["blockDevs"] == []
    assert (dom["tags"], dom["mem"], dom["numVCPU"]) == ("a,b", 1 << 30, 2)
    assert len(dom["netDevs"]) == len(saved_nics)
    for new, old in zip(dom["netDevs"], saved_nics, strict=True):
        assert new["vlan"] == vlan_map.get(old["vlan"], old["vlan"])
        assert new["type"] == old["type"] and new["connected"] == old["connected"]
        assert ("macAddress" in new) == keep_macs
