"""Hypothesis fuzzing of the two front doors: the config loader and every CLI command.

The loader must turn any document into a `Config` or a `ConfigError` (with a line where
it can), never another exception. Every command, with random arguments drawn from its
own options plus junk, must end with a documented exit code and never print a traceback
or "internal error". Commands that serve forever (`sim serve`, `demo`, `mount`) are
left out; cluster calls go to a closed local port, so they fail fast with exit 4.
"""

from __future__ import annotations

import socket
import string
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hcbak.cli.main import root_command
from hcbak.config import Config, load_config
from hcbak.errors import ConfigError

from .helpers import cli

pytestmark = pytest.mark.reliability

# --- config loader ----------------------------------------------------------------------
KEYS = [
    "state_dir", "smtp", "host", "port", "security", "username", "password",
    "password_env", "password_file", "password_command", "sender", "clusters", "nodes",
    "tls", "fingerprints", "ca_file", "insecure", "worker_vm", "device_root", "timeouts",
    "connect", "read", "task", "update_wait", "retries", "repositories", "path",
    "compression", "block_size", "passphrase_env", "passphrase", "jobs", "cluster",
    "repo", "vms", "tags", "exclude", "disks", "retention", "keep_last", "keep_daily",
    "keep_within", "schedule", "parallel", "retry_wait", "alert_after", "prune",
    "notify", "email", "to", "on", "hooks", "pre", "post", "c1", "r1", "nightly",
]  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.sampled_from(
        [
            "1MiB",
            "3MiB",
            "lz4",
            "zstd",
            "snappy",
            "0 1 * * *",
            "@daily",
            "61 * * * *",
            "36h",
            "1d12h",
            "-1",
            "10.0.0.1",
            "[::1]:443",
            "host:99999",
            "a" * 64,
            "",
            "after_run",
            "failure",
            "/tmp",
            "~",
            "\x00",
            "é",
            "0x10",
            "1e400",
        ]
    ),
    st.text(max_size=12),
)


def _documents() -> st.SearchStrategy[Any]:
    keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=6))
    return st.recursive(
        SCALARS,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=6)
        ),
        max_leaves=30,
    )


def _check_loader(path: Path) -> None:
    try:
        result = load_config(path)
    except ConfigError as exc:
        assert str(exc), "a config error says what is wrong"
        return
    assert isinstance(result, Config)


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(doc=st.dictionaries(st.sampled_from([*KEYS[:27], "jobs", "repositories"]), _documents()))
def test_config_loader_returns_a_config_or_a_config_error_for_any_document(
    tmp_path_factory: pytest.TempPathFactory, doc: dict[str, Any]
) -> None:
    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    try:
        text = yaml.safe_dump(doc, allow_unicode=True)
    except (yaml.YAMLError, ValueError):
        return
    path.write_text(text)
    path.chmod(0o600)
    _check_loader(path)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=st.text(alphabet=string.printable + "é\t{}[]:-&*!|>'\"%@`", max_size=300))
def test_config_loader_survives_arbitrary_text(
    tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    path.write_text(text)
    path.chmod(0o600)
    _check_loader(path)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=st.binary(max_size=200))
def test_config_loader_survives_arbitrary_bytes(
    tmp_path_factory: pytest.TempPathFactory, raw: bytes
) -> None:
    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    path.write_bytes(raw)
    path.chmod(0o600)
    _check_loader(path)


# --- every CLI command ------------------------------------------------------------------
NEVER_ENDING = {("sim", "serve"), ("demo",), ("mount",)}


def _leaf_commands() -> dict[tuple[str, ...], Any]:
    """Walk the Typer tree the way `hcbak --help` does: group -> subcommands -> leaves."""
    out: dict[tuple[str, ...], Any] = {}

    def walk(cmd: Any, path: tuple[str, ...]) -> None:
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, (*path, name))
        elif path not in NEVER_ENDING:
            out[path] = cmd

    walk(root_command(load_all=True), ())
    return out


COMMANDS = _leaf_commands()
JUNK = st.one_of(
    st.sampled_from(
        [
            "c1",
            "r1",
            "nightly",
            "web01",
            "web01@latest",
            "web01@2026-01-01",
            "0",
            "-1",
            "abc",
            "",
            "--",
            "-",
            "--json",
            "--help",
            "--bogus",
            "1MiB",
            "zstd",
            "none",
            "10.0.0.1",
            "127.0.0.1:1",
            "deadbeef",
            "x" * 300,
            "../etc",
            "%s",
            "é",
        ]
    ),
    st.text(alphabet=string.ascii_letters + string.digits + "-_@:./", max_size=10),
)


@st.composite
def _invocation(draw: st.DrawFn) -> list[str]:
    path = draw(st.sampled_from(sorted(COMMANDS)))
    cmd = COMMANDS[path]
    args: list[str] = list(path)
    for param in cmd.params:
        opts = [o for o in getattr(param, "opts", []) if o.startswith("-")]
        if opts:
            if opts[0] in ("--help", "-h") or not draw(st.booleans()):
                continue
            args.append(draw(st.sampled_from(opts)))
            if not getattr(param, "is_flag", False):
                args.append(draw(JUNK))
        elif draw(st.integers(0, 9)) > 0:  # positional: usually given
            args.append(draw(JUNK))
    for _ in range(draw(st.integers(0, 2))):  # junk in random places
        args.insert(draw(st.integers(len(path), len(args))), draw(JUNK))
    return args


@pytest.fixture(scope="module")
def fuzz_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_fuzz_env(tmp_path_factory.mktemp("clifuzz"))


def make_fuzz_env(tmp: Path) -> dict[str, str]:
    """A config with one cluster (on a closed local port), one repository and one job."""
    with socket.socket() as s:  # a port nobody listens on: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    repo = tmp / "repo"
    env = {
        "HCBAK_CONFIG": str(tmp / "config.yaml"),
        "HCBAK_STATE_DIR": str(tmp / "state"),
        "HCBAK_FUZZ_PW": "not-a-real-password",
    }
    (tmp / "config.yaml").write_text(
        f"""clusters:
  c1:
    nodes: ["127.0.0.1:{port}"]
    username: u
    password_env: HCBAK_FUZZ_PW
    tls: {{insecure: true}}
    timeouts: {{connect: 0.2, read: 0.5, task: 1, update_wait: 0.2}}
    retries: 0
repositories:
  r1:
    path: {repo}
    block_size: 256KiB
jobs:
  nightly:
    cluster: c1
    repo: r1
    tags: [nightly]
    retries: 0
    retry_wait: 0
"""
    )
    (tmp / "config.yaml").chmod(0o600)
    (tmp / "config.orig").write_text((tmp / "config.yaml").read_text())
    from hcbak.repo import init_repo

    init_repo(repo, block_size=256 << 10)
    return env


def test_the_walk_covers_every_command_group() -> None:
    groups = {path[0] for path in COMMANDS}
    assert {"cluster", "repo", "job", "config", "points", "restore", "notify"} <= groups
    assert ("job", "run") in COMMANDS and ("sim", "serve") not in COMMANDS


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(argv=_invocation())
def test_every_command_with_random_arguments_ends_with_a_documented_exit_code(
    fuzz_env: dict[str, str], argv: list[str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    import os

    # Each example starts from the same config (an earlier one may have removed the job).
    config = Path(fuzz_env["HCBAK_CONFIG"])
    config.write_text(config.with_suffix(".orig").read_text())
    config.chmod(0o600)
    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))  # files a command writes land here
    try:
        res = cli(fuzz_env, *argv)
    finally:
        os.chdir(cwd)
    res.assert_clean()
