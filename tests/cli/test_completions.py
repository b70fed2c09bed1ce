"""Completion scripts: committed copies match the app, and bash really completes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from hcbak.cli.completions import FILES, default_directory, main

REPO_COMPLETIONS = Path(__file__).resolve().parents[2] / "completions"


def test_committed_completions_match_the_command_tree(tmp_path: Path) -> None:
    assert default_directory() == REPO_COMPLETIONS
    assert main(["completions", str(tmp_path)]) == 0
    for name in FILES.values():
        fresh = (tmp_path / name).read_text()
        committed = (REPO_COMPLETIONS / name).read_text()
        assert fresh == committed, f"completions/{name} is stale: run `make completions`"


def _bash_complete(words: list[str]) -> list[str]:
    script = REPO_COMPLETIONS / FILES["bash"]
    line = " ".join(f"'{w}'" for w in words)
    program = (
        f"source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; "
        '_hcbak_complete; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    proc = subprocess.run(["bash", "-c", program], capture_output=True, text=True, check=True)
    return [w for w in proc.stdout.splitlines() if w]


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_bash_completes_groups_commands_and_options() -> None:
    assert _bash_complete(["hcbak", "clu"]) == ["cluster"]
    assert {"create", "edit", "list", "remove", "show"} <= set(_bash_complete(["hcbak", "job", ""]))
    assert "--trust-on-first-use" in _bash_complete(["hcbak", "cluster", "add", "x", "--t"])
    assert _bash_complete(["hcbak", "--config", "f.yaml", "config", "ch"]) == ["check"]
    # After an option that takes a value, the script leaves it to file completion.
    assert _bash_complete(["hcbak", "cluster", "add", "x", "--node", ""]) == []
    # --read-data is an option; its value is optional, so what follows completes as usual.
    assert _bash_complete(["hcbak", "repo", "verify", "main", "--re"]) == ["--read-data"]
    assert _bash_complete(["hcbak", "repo", "verify", "main", "--read-data", "--j"]) == ["--json"]


def test_bad_usage_of_the_generator_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bogus"]) == 2
    assert "usage:" in capsys.readouterr().err
