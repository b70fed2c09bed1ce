"""Every command's --help is meaningful, and every command is documented in docs/cli.md.

Walks the real command tree, so commands added later are covered automatically.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from hcbak import __version__
from hcbak.cli.completions import Node, command_tree, iter_nodes

DOCS = Path(__file__).resolve().parents[2] / "docs"
NODES = [n for n in iter_nodes(command_tree())]
PLACEHOLDER = re.compile(r"^\w+ commands\.?$", re.IGNORECASE)


def _id(node: Node) -> str:
    return " ".join(node.path) or "(root)"


@pytest.mark.parametrize("node", NODES, ids=_id)
def test_help_of_every_command_is_meaningful(
    node: Node, run_inproc: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    proc = run_inproc(*node.path, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout and f"hcbak {' '.join(node.path)}".strip() in proc.stdout
    assert len(node.help) >= 12 and not PLACEHOLDER.match(node.help), node.help
    assert node.help in " ".join(proc.stdout.replace("│", " ").split())
    undocumented = [o for o in node.options if not node.option_help.get(o)]
    assert not undocumented, f"options without help: {undocumented}"


def test_root_help_lists_groups_and_exit_codes(
    run_inproc: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    text = run_inproc("--help").stdout
    for group in ("cluster", "repo", "job", "config"):
        assert group in text
    assert "Exit codes: 0 ok" in " ".join(text.replace("│", " ").split())


def test_every_command_has_a_section_in_docs_cli_md() -> None:
    headings = set(re.findall(r"^### (hcbak [\w -]+?)\s*$", (DOCS / "cli.md").read_text(), re.M))
    commands = {f"hcbak {' '.join(n.path)}" for n in NODES if n.path and not n.children}
    missing = sorted(commands - headings)
    assert not missing, f"add these to docs/cli.md: {missing}"
    stale = sorted(headings - commands)
    assert not stale, f"docs/cli.md documents commands that do not exist: {stale}"


def test_exit_code_table_documents_every_code() -> None:
    from hcbak.errors import ExitCode

    text = (DOCS / "exit-codes.md").read_text()
    for code in ExitCode:
        assert re.search(rf"^\| {int(code)} \| `{code.name}` \|", text, re.M), code


def test_a_command_imports_only_its_own_group(hcbak_env: dict[str, str]) -> None:
    """`hcbak job list` (and `job run` from cron) must not import the other groups, nor
    modules that only some runs use: every import is paid by every cron run. (`job run`
    talks to the cluster through requests, whose urllib3 imports tempfile: so the
    lean check is made before the engine is imported.)"""
    code = (
        "import sys\n"
        "import hcbak.repo.codec\n"
        "from hcbak.cli.main import run\n"
        "run(['job', 'list'])\n"
        "lean = [m for m in sys.modules if m in ('zstandard', 'tempfile')]\n"
        "import hcbak.engine.backup\n"
        "print(' '.join(sorted([m for m in sys.modules if m.startswith('hcbak.cli.')] + lean)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=hcbak_env, capture_output=True, text=True, timeout=60
    )
    loaded = set(proc.stdout.split())
    assert "hcbak.cli.job" in loaded, proc.stderr
    others = {"hcbak.cli.cluster", "hcbak.cli.repo", "hcbak.cli.restore", "hcbak.cli.points"}
    others |= {"hcbak.cli.demo", "hcbak.cli.mount"}  # single commands load on use too
    assert not loaded & others
    # Nor what only some runs need (zstd repositories; config edits and the demo).
    assert not loaded & {"zstandard", "tempfile"}


def test_version_flag_prints_the_version_before_any_command(
    run_inproc: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    """`hcbak --version` is what an operator types first; it must not need a config."""
    for flag in ("--version", "-V"):
        proc = run_inproc(flag, "job", "run", "no-such-job")
        assert (proc.returncode, proc.stdout) == (0, f"hcbak {__version__}\n"), proc.stderr


def test_a_mistyped_group_still_gets_a_suggestion(
    run_inproc: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    proc = run_inproc("restroe", "disk")
    assert proc.returncode == 2
    assert "Did you mean 'restore'?" in proc.stderr


def test_command_modules_keep_their_annotations_evaluated() -> None:
    """Typer evaluates postponed (string) annotations at every command build: 12 ms more
    per `job run` for the job group alone (hcbak/cli/__init__.py)."""
    cli = Path(__file__).resolve().parents[2] / "hcbak" / "cli"
    defining = [p for p in cli.glob("*.py") if re.search(r"\bapp\.command\(", p.read_text())]
    assert len(defining) >= 10
    postponed = [p.name for p in defining if "from __future__ import annotations" in p.read_text()]
    assert postponed == []


def _synopses() -> dict[str, str]:
    """`hcbak repo prune` -> its synopsis in docs/cli.md (the code span that starts
    with the command, right under its heading)."""
    text = (DOCS / "cli.md").read_text()
    found = re.findall(r"^### (hcbak [\w -]+?)\s*\n`(hcbak [^`]*)`", text, flags=re.M)
    return {heading: " ".join(span.split()) for heading, span in found if span.startswith(heading)}


def test_docs_cli_md_shows_options_as_the_parser_reads_them() -> None:
    """`[--wait]` for an option that takes seconds, `[--seed S]` for a flag and
    `[--state DIR]` for a required option are all wrong in the same way: a reader
    copies the synopsis and gets exit 2."""
    from hcbak.cli.main import root_command

    synopses = _synopses()
    assert len(synopses) >= 20
    tree = root_command(load_all=True)
    for node in NODES:
        text = synopses.get(f"hcbak {' '.join(node.path)}")
        if text is None:
            continue
        command = tree
        for name in node.path:
            command = command.commands[name]
        required = {o for p in command.params if p.required for o in getattr(p, "opts", [])}
        for option in re.findall(r"--[a-z][\w-]*", text):
            assert option in node.options, f"{_id(node)}: no option {option}"
        for option in re.findall(r"\[(--[a-z][\w-]*)\]", text):
            assert option not in node.value_options, f"{_id(node)}: {option} takes a value"
        for option in re.findall(r"\[(--[a-z][\w-]*) [A-Z]", text):
            assert option in node.value_options, f"{_id(node)}: {option} is a flag"
        for option in sorted(o for o in required if o.startswith("--")):
            unbracketed = re.search(rf"(?<!\[){option}\b", text)
            assert unbracketed, f"{_id(node)}: show the required {option} without [ ]"
