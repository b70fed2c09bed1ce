"""`hcbak completion show|install`: the committed scripts, where each shell looks for them.

Real `hcbak` subprocesses with HOME and the XDG folders inside tmp_path.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import RunHcbak

from hcbak.cli.completions import FILES

from .helpers import expect

COMPLETIONS = Path(__file__).resolve().parents[2] / "completions"


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """A HOME of our own, with no XDG variables (the defaults under HOME apply)."""
    (tmp_path / "home").mkdir()
    unset = ("XDG_DATA_HOME", "XDG_CONFIG_HOME", "BASH_COMPLETION_USER_DIR", "ZDOTDIR")
    return {"HOME": str(tmp_path / "home"), **dict.fromkeys(unset, "")}


@pytest.mark.parametrize(
    ("shell", "where"),
    [
        ("bash", ".local/share/bash-completion/completions/hcbak"),
        ("zsh", ".zfunc/_hcbak"),
        ("fish", ".config/fish/completions/hcbak.fish"),
    ],
)
def test_install_writes_the_committed_script_where_the_shell_looks(
    run_hcbak: RunHcbak, home: dict[str, str], shell: str, where: str
) -> None:
    proc = run_hcbak("completion", "install", shell, env=home, check=True)
    target = Path(home["HOME"]) / where
    assert target.read_text() == (COMPLETIONS / FILES[shell]).read_text()
    assert f"written {target}" in proc.stdout
    # `show` prints the same text, so the two cannot drift apart
    shown = run_hcbak("completion", "show", shell, env=home, check=True).stdout
    assert shown == target.read_text()
    # a second install finds its own file and leaves it
    again = run_hcbak("completion", "install", shell, "--json", env=home, check=True)
    assert json.loads(again.stdout)["action"] == "unchanged"


def test_shell_comes_from_dollar_shell_and_xdg_dirs_are_honoured(
    run_hcbak: RunHcbak, home: dict[str, str], tmp_path: Path
) -> None:
    env = {**home, "SHELL": "/usr/bin/fish", "XDG_CONFIG_HOME": str(tmp_path / "xdg-config")}
    proc = run_hcbak("completion", "install", "--json", env=env, check=True)
    report = json.loads(proc.stdout)
    assert report == {
        "shell": "fish",
        "path": str(tmp_path / "xdg-config/fish/completions/hcbak.fish"),
        "action": "written",
        "rc_line": None,
    }
    env = {**home, "SHELL": "/bin/bash", "XDG_DATA_HOME": str(tmp_path / "xdg-data")}
    proc = run_hcbak("completion", "install", env=env, check=True)
    assert (tmp_path / "xdg-data/bash-completion/completions/hcbak").is_file()
    assert not (Path(home["HOME"]) / ".local").exists()
    # bash-completion's own override of that folder wins
    env["BASH_COMPLETION_USER_DIR"] = str(tmp_path / "bc")
    run_hcbak("completion", "install", "bash", env=env, check=True)
    assert (tmp_path / "bc/completions/hcbak").is_file()


def test_zsh_names_the_zshrc_line_only_when_it_is_missing(
    run_hcbak: RunHcbak, home: dict[str, str]
) -> None:
    proc = run_hcbak("completion", "install", "zsh", env=home, check=True)
    assert "fpath=(~/.zfunc $fpath)" in proc.stdout and "compinit" in proc.stdout
    (Path(home["HOME"]) / ".zshrc").write_text("fpath=(~/.zfunc $fpath)\nautoload -Uz compinit\n")
    proc = run_hcbak("completion", "install", "zsh", "--json", env=home, check=True)
    assert json.loads(proc.stdout)["rc_line"] is None


def test_a_file_hcbak_did_not_write_is_kept_unless_forced(
    run_hcbak: RunHcbak, home: dict[str, str]
) -> None:
    target = Path(home["HOME"]) / ".config/fish/completions/hcbak.fish"
    target.parent.mkdir(parents=True)
    target.write_text("# my own hcbak completion\n")
    proc = run_hcbak("completion", "install", "fish", env=home)
    expect(proc, 2, "was not written by hcbak", "--force")
    assert target.read_text() == "# my own hcbak completion\n"
    run_hcbak("completion", "install", "fish", "--force", env=home, check=True)
    assert target.read_text() == (COMPLETIONS / FILES["fish"]).read_text()


@pytest.mark.parametrize(
    ("args", "shell_env", "message"),
    [
        (["completion", "install", "powershell"], "/bin/bash", "unknown shell 'powershell'"),
        (["completion", "show", "tcsh"], "/bin/bash", "use one of bash, zsh, fish"),
        (["completion", "install"], "/bin/tcsh", "$SHELL is '/bin/tcsh'"),
        (["completion", "show"], "", "$SHELL is not set"),
    ],
)
def test_a_shell_hcbak_cannot_complete_for_exits_2(
    run_hcbak: RunHcbak, home: dict[str, str], args: list[str], shell_env: str, message: str
) -> None:
    proc = run_hcbak(*args, env={**home, "SHELL": shell_env})
    expect(proc, 2, message)
    assert proc.stdout == "" and not any(Path(home["HOME"]).iterdir())


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_the_installed_bash_script_completes(run_hcbak: RunHcbak, home: dict[str, str]) -> None:
    run_hcbak("completion", "install", "bash", env=home, check=True)
    script = Path(home["HOME"]) / ".local/share/bash-completion/completions/hcbak"
    program = (
        f"source {script}; COMP_WORDS=(hcbak schedule ''); COMP_CWORD=2; "
        '_hcbak_complete; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    proc = subprocess.run(["bash", "-c", program], capture_output=True, text=True, check=True)
    assert proc.stdout.split() == ["install", "remove", "show"]


def _stub_hcbak(home: dict[str, str]) -> dict[str, str]:
    """An `hcbak` on PATH: fish loads a command's completions only when it exists."""
    bin_dir = Path(home["HOME"]) / "bin"
    bin_dir.mkdir()
    (bin_dir / "hcbak").symlink_to(Path(sys.executable).parent / "hcbak")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "HCBAK_"))}
    return {**env, "HOME": home["HOME"], "PATH": f"{bin_dir}:{env.get('PATH', '/usr/bin:/bin')}"}


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish not installed: not run")
def test_fish_loads_the_installed_script_and_completes(
    run_hcbak: RunHcbak, home: dict[str, str]
) -> None:
    run_hcbak("completion", "install", "fish", env=home, check=True)
    env = _stub_hcbak(home)

    def complete(line: str) -> list[str]:
        proc = subprocess.run(
            ["fish", "-c", f"complete -C '{line}'"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            cwd=home["HOME"],
        )
        return [row.split("\t")[0] for row in proc.stdout.splitlines()]

    assert complete("hcbak sched") == ["schedule"]
    assert complete("hcbak schedule ") == ["install", "remove", "show"]
    assert "--every" in complete("hcbak schedule install --e")
    assert complete("hcbak --config x.yaml completion i") == ["install"]


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh not installed: not run")
def test_zsh_completes_on_the_first_tab_from_zfunc(
    run_hcbak: RunHcbak, home: dict[str, str]
) -> None:
    """An interactive zsh on a pseudo-terminal, set up as `install` says, completes
    `hcbak sched<TAB>` on the very first <TAB> (compinit autoloads the file then)."""
    proc = run_hcbak("completion", "install", "zsh", env=home, check=True)
    rc_lines = [ln.strip() for ln in proc.stdout.splitlines()[2:]]
    (Path(home["HOME"]) / ".zshrc").write_text("\n".join([*rc_lines, "PS1='> '", ""]))
    env = {**_stub_hcbak(home), "TERM": "dumb"}
    master, slave = os.openpty()
    shell = subprocess.Popen(
        ["zsh", "-i"], stdin=slave, stdout=slave, stderr=slave, env=env, cwd=home["HOME"]
    )
    os.close(slave)
    try:
        _read_until(master, b"> ")
        os.write(master, b"hcbak sched\t")
        assert b"hcbak schedule " in _read_until(master, b"schedule ")
    finally:
        shell.kill()
        shell.wait(timeout=10)
        os.close(master)


def _read_until(fd: int, wanted: bytes, timeout: float = 15) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while wanted not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                seen += os.read(fd, 4096)
            except OSError:
                break
    return seen
