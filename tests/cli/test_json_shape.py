"""One shape for `--json` (issue 19), held for every command that has the option.

Every command with `--json` runs here against a real config and simulator, and its
document must follow docs/cli.md: an object (never a bare list); a listing names its
list; one key name for one thing (a VM is `vm`, never `vm_name`, and `vm` is always
the VM's name). A new command with `--json` fails this test until it is added to
ARGS below, so no command escapes the rule. The human tables keep point ids whole at
80 columns and say `warning` for a VM backed up with warnings.
"""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from engine.helpers import Lab, MiB, lab
from harness import HCBAK, RunHcbak

from hcbak.cli.main import root_command

# Each listing's list, by command.
LISTINGS = {
    "cluster list": "clusters",
    "repo list": "repositories",
    "job list": "jobs",
    "points list": "points",
}
# Names that mean a thing another key already names (docs/cli.md: one name per thing).
SYNONYMS = {
    "vm_name": "vm",
    "vmName": "vm",
    "repository": "repo",
    "repo_name": "repo",
    "job_name": "job",
    "point": "point_id",
}


def json_commands() -> set[str]:
    """Every command of the tree that takes --json, as "group command"."""
    found: set[str] = set()

    def walk(cmd: Any, path: tuple[str, ...]) -> None:
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, (*path, name))
        elif any("--json" in getattr(p, "opts", ()) for p in cmd.params):
            found.add(" ".join(path))

    walk(root_command(load_all=True), ())
    return found


def args_for(L: Lab, point_id: str, tmp: Path) -> dict[str, list[str]]:
    """The arguments each --json command runs with (besides --json)."""
    shapes = tmp / "shapes.json"
    units = tmp / "units"
    return {
        "version": [],
        "cluster list": [],
        "cluster show": ["lab"],
        "cluster test": ["lab"],
        "cluster probe": ["lab"],
        "repo list": [],
        "repo show": ["main"],
        "repo forget": ["main", "--dry-run"],
        "repo prune": ["main", "--dry-run"],
        "repo repair": ["main", "--dry-run"],
        "repo verify": ["main"],
        "repo copy": ["main", "spare", "--dry-run"],
        "job list": [],
        "job show": ["nightly"],
        "job run": ["nightly", "--dry-run"],
        "config show": [],
        "config check": [],
        "points list": [],
        "points show": [point_id],
        "restore vm": [point_id, "--as", "web01-copy"],
        "restore disk": [point_id, "--disk", "0", "--to", str(tmp / "disk.raw")],
        "sim check-shapes": [str(shapes)],
        "schedule show": ["--unit-dir", str(units)],
        "schedule install": ["--unit-dir", str(units), "--yes"],
        "schedule remove": ["--unit-dir", str(units), "--yes"],
        "completion install": ["bash"],
    }


@pytest.fixture
def backed_up(tmp_path: Path, run_inproc: RunHcbak) -> Iterator[tuple[Lab, str]]:
    """A lab whose job quiesces on a cluster too old for it (so its VM is backed up
    with a warning), with one point of VM web01."""
    with lab(tmp_path, quiesce=True, schedule="0 1 * * *") as L:
        L.sim.create_vm("web01", [2 * MiB], tags=["nightly"])
        proc = run_inproc("job", "run", "nightly", "--json", env=L.env)
        assert proc.returncode == 1, proc.stderr  # the warning
        (vm,) = json.loads(proc.stdout)["jobs"][0]["vms"]
        assert vm["warnings"], vm
        yield L, vm["point_id"]


def test_every_json_command_prints_one_object_with_one_name_per_thing(
    backed_up: tuple[Lab, str], run_inproc: RunHcbak, tmp_path: Path
) -> None:
    L, point_id = backed_up
    env = {**L.env, "HOME": str(tmp_path / "home")}
    shapes = run_inproc("sim", "shapes", env=env)
    assert shapes.returncode == 0, shapes.stderr
    (tmp_path / "shapes.json").write_text(shapes.stdout)
    spare = run_inproc("repo", "add", "spare", "--path", str(tmp_path / "spare"), env=env)
    assert spare.returncode == 0, spare.stderr
    table = args_for(L, point_id, tmp_path)
    assert json_commands() == set(table), "add the new --json command to args_for()"
    problems: list[str] = []
    for command, args in table.items():
        proc = run_inproc(*command.split(), *args, "--json", env=env)
        assert proc.returncode in (0, 1), (command, proc.returncode, proc.stderr)
        doc = json.loads(proc.stdout)
        if not isinstance(doc, dict):
            problems.append(f"{command}: prints a {type(doc).__name__}, not an object")
            continue
        listing = LISTINGS.get(command)
        if listing is not None and not isinstance(doc.get(listing), list):
            problems.append(f"{command}: has no list named {listing!r}")
        problems += [f"{command}: {p}" for p in _naming_problems(doc)]
    assert problems == []


def _naming_problems(doc: Any, where: str = "") -> list[str]:
    out: list[str] = []
    if isinstance(doc, list):
        for item in doc:
            out += _naming_problems(item, f"{where}[]")
    elif isinstance(doc, dict):
        for key, value in doc.items():
            path = f"{where}.{key}" if where else str(key)
            if key in SYNONYMS:
                out.append(f"{path}: call it {SYNONYMS[key]!r}")
            if key == "vm" and not isinstance(value, str):
                out.append(f"{path}: `vm` is the VM's name, not a {type(value).__name__}")
            if key != "vm_definition":  # the API's own record, as the cluster wrote it
                out += _naming_problems(value, path)
    return out


def test_tables_keep_point_ids_whole_at_80_columns_and_say_warning(
    backed_up: tuple[Lab, str], hcbak_env: dict[str, str]
) -> None:
    L, point_id = backed_up
    env = {**hcbak_env, **L.env, "COLUMNS": "80", "LINES": "50"}
    for argv in (["points", "list"], ["repo", "forget", "main", "--dry-run"]):
        out = _on_a_terminal(argv, env)
        assert point_id in out, out
    run = _on_a_terminal(["job", "run", "nightly"], env)
    row = next(line for line in run.splitlines() if "web01" in line)
    assert "warning" in row and " ok " not in row, run
    assert re.search(r"\b[0-9a-f]{32}\b", row), run  # the new point's id, whole


def _on_a_terminal(argv: list[str], env: dict[str, str]) -> str:
    """stdout of `hcbak ARGV` when stdout is a terminal (rich tables), as text."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [*HCBAK, *argv],
        stdout=slave,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(timeout=120)
    os.close(master)
    return b"".join(chunks).decode(errors="replace")
