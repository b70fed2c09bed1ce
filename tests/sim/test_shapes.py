"""Shape reports and `hcbak sim check-shapes`: a field report becomes a simulator fix.

The comparison is pure (hcbak/hypercore/shapes.py) and tested as such; the CLI runs as a
real process on a report the simulator itself produced (`hcbak sim shapes`), then on
copies with one key removed and one retyped, which must list exactly those.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness import RunHcbak
from hypothesis import given
from hypothesis import strategies as st

from hcbak.hypercore.shapes import compare, load_report, make_report, shape_of

VM = {
    "uuid": "u",
    "mem": 1,
    "affinityStrategy": {"strictAffinity": False},
    "blockDevs": [{"uuid": "d", "capacity": 1}],
    "bootDevices": ["d"],
    "cloudInitData": None,
}


def _report(records: dict[str, list[Any]]) -> dict[str, dict[str, set[str]]]:
    return load_report(json.dumps(make_report(records)))


def test_shape_of_lists_nested_paths_with_json_types_and_no_values() -> None:
    shape = shape_of([VM, {**VM, "cloudInitData": {"userData": ""}, "mem": True}])
    assert shape == {
        "uuid": {"string"},
        "mem": {"integer", "boolean"},
        "affinityStrategy": {"object"},
        "affinityStrategy.strictAffinity": {"boolean"},
        "blockDevs": {"array"},
        "blockDevs[]": {"object"},
        "blockDevs[].uuid": {"string"},
        "blockDevs[].capacity": {"integer"},
        "bootDevices": {"array"},
        "bootDevices[]": {"string"},
        "cloudInitData": {"null", "object"},
        "cloudInitData.userData": {"string"},
    }
    assert '"d"' not in json.dumps(make_report({"VirDomain": [VM]}))  # no values leak


def test_compare_lists_exactly_a_removed_and_a_retyped_key() -> None:
    sim = _report({"VirDomain": [VM]})
    assert compare(sim, sim) == []
    field = _report({"VirDomain": [{k: v for k, v in VM.items() if k != "mem"} | {"uuid": 7}]})
    assert compare(field, sim) == [
        "VirDomain.mem: the simulator sends integer, the cluster did not",
        "VirDomain.uuid: the cluster sends integer, the simulator string",
    ]
    extra = _report({"VirDomain": [{**VM, "newKey": [1]}], "Alarm": [{"uuid": "a"}]})
    assert compare(extra, sim) == [
        "Alarm: served by the cluster, not by the simulator",
        "VirDomain.newKey: the cluster sends array, the simulator lacks it",
        "VirDomain.newKey[]: the cluster sends integer, the simulator lacks it",
    ]


def test_empty_containers_in_the_field_prove_nothing_about_their_insides() -> None:
    sim = _report({"VirDomain": [VM]})
    empty = {**VM, "blockDevs": [], "bootDevices": [], "affinityStrategy": {}}
    assert compare(_report({"VirDomain": [empty]}), sim) == []
    assert compare(_report({"VirDomain": []}), sim) == []  # nothing seen, nothing to say


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=3),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("abc"), inner, max_size=3)
        ),
        max_leaves=12,
    )
)
def test_any_record_compared_with_itself_has_no_difference(value: Any) -> None:
    report = _report({"R": [{"k": value}]})
    assert compare(report, report) == []


def test_check_shapes_cli_on_the_simulators_own_report_and_on_a_changed_one(
    run_hcbak: RunHcbak, tmp_path: Path
) -> None:
    own = run_hcbak("sim", "shapes", check=True)
    report = json.loads(own.stdout)
    resources = report["resources"]
    # every resource of the conformance table is in the report, none empty but schedules
    assert {k for k, v in resources.items() if not v} == {"VirDomainSnapshotSchedule"}
    assert resources["VirDomain"]["affinityStrategy.strictAffinity"] == ["boolean"]
    path = tmp_path / "own.json"
    path.write_text(own.stdout)
    same = run_hcbak("sim", "check-shapes", str(path))
    assert (same.returncode, same.stdout) == (0, "")
    assert "0 difference(s)" in same.stderr

    del resources["VirDomain"]["machineTypeKeyword"]
    resources["VirtualDisk"]["capacityBytes"] = ["string"]
    path.write_text(json.dumps(report))
    changed = run_hcbak("sim", "check-shapes", str(path), "--json")
    assert changed.returncode == 1
    assert json.loads(changed.stdout)["differences"] == [
        "VirDomain.machineTypeKeyword: the simulator sends string, the cluster did not",
        "VirtualDisk.capacityBytes: the cluster sends string, the simulator integer",
    ]
    path.write_text("{}")
    bad = run_hcbak("sim", "check-shapes", str(path))
    assert bad.returncode == 2 and "not a shape report" in bad.stderr
    assert "Traceback" not in bad.stderr
