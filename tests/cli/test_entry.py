"""The console script runs `job run` without Typer, and starts its key derivation first."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from harness import RunHcbak
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hcbak.cli.entry import JobRun, parse_job_run, start_job_key_early
from hcbak.config import (
    ClusterConfig,
    Config,
    JobConfig,
    RepoConfig,
    TLSConfig,
    load_config,
    save_config,
)
from hcbak.engine.background import derive_repository_key_early
from hcbak.repo import init_repo, kdf, open_repo
from hcbak.secrets import Secret, SecretRef


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["job", "run", "nightly"], JobRun(None, False, ["nightly"])),
        (
            ["--config", "/x.yaml", "job", "run", "a", "b"],
            JobRun(Path("/x.yaml"), False, ["a", "b"]),
        ),
        (
            ["-c", "/x", "--debug", "job", "run", "--parallel", "2", "a"],
            JobRun(Path("/x"), True, ["a"], parallel=2),
        ),
        (
            ["--config=/y", "job", "run", "--all", "--json"],
            JobRun(Path("/y"), False, [], all_jobs=True, json_out=True),
        ),
        (
            ["job", "run", "--full", "b", "--dry-run", "--parallel=3"],
            JobRun(None, False, ["b"], full=True, dry_run=True, parallel=3),
        ),
        (["job", "run", "--due", "--json"], JobRun(None, False, [], due=True, json_out=True)),
        (["job", "run"], JobRun(None, False, [])),  # run_jobs itself says what is missing
        (["job", "run", "a", "--help"], None),
        (["job", "run", "--json", "--json"], None),
        (["job", "run", "--parallel", "0", "a"], None),
        (["job", "run", "--parallel", "-1", "a"], None),
        (["job", "run", "--", "a"], None),
        (["job", "run", "--verbose", "a"], None),
        (["--version", "job", "run", "a"], None),
        (["-c", "--debug", "job", "run", "a"], None),
        (["job", "list"], None),
        (["repo", "verify", "main"], None),
        (["--config"], None),
        ([], None),
    ],
)
def test_the_common_forms_of_job_run_are_read_without_typer(
    argv: list[str], expected: JobRun | None
) -> None:
    assert parse_job_run(argv) == expected


# Pieces from which the property test builds `hcbak ...` argument lists: every option
# the fast path reads with good values, and (rarer) bad values and things it must
# leave to Typer, so that both sides of its decision are well exercised.
_CONFIGS = [["--config", "/c.yaml"], ["-c", "/c"], ["--config=/d.yaml"]]
_BAD_GLOBAL = [["-V"], ["--help"], ["x"], ["--config"], ["-c", "--debug"], ["--config="], *_CONFIGS]
_GOOD_ITEMS = [
    ["nightly"], ["web"], ["--all"], ["--due"], ["--json"], ["--dry-run"], ["--full"],
    ["--parallel", "2"], ["--parallel=3"], ["--parallel", "02"], ["job"], ["run"],
]  # fmt: skip
_BAD_ITEMS = [
    ["--parallel", "0"], ["--parallel=0"], ["--parallel", "-1"], ["--parallel"], ["--help"],
    ["--"], ["-"], [""], ["--verbose"], ["--json=1"], ["-h"], ["--parallel", "x"], ["-q"],
]  # fmt: skip


@st.composite
def _pieces(draw: Any, good: list[list[str]], bad: list[list[str]], most: int) -> list[str]:
    """Distinct good pieces in any order, and now and then one bad or repeated one."""
    pieces = draw(st.lists(st.sampled_from(good), max_size=most, unique_by=tuple))
    if draw(st.integers(0, 3)) == 0:
        odd = draw(st.sampled_from(bad + good))
        pieces.insert(draw(st.integers(0, len(pieces))), odd)
    return [token for piece in pieces for token in piece]


def _what_typer_passes(argv: list[str]) -> tuple[int, list[JobRun]]:
    """Run `argv` through the Typer CLI in this process, with `run_jobs` replaced by a
    recorder (the one stand-in: what is compared is the parse, not the backup)."""
    from hcbak.cli import job_run
    from hcbak.cli.context import OPTIONS
    from hcbak.cli.main import run
    from hcbak.errors import ExitCode

    calls: list[JobRun] = []

    def record(names: list[str], **kw: Any) -> ExitCode:
        calls.append(JobRun(OPTIONS.config_path, OPTIONS.debug, list(names), **kw))
        return ExitCode.WARNINGS

    OPTIONS.config_path, OPTIONS.debug = None, False
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(job_run, "run_jobs", record)
        mp.setattr(logging, "basicConfig", lambda **kw: None)  # --debug: keep pytest's logging
        code = run(argv)
    return code, calls


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    before=st.sampled_from(_CONFIGS).flatmap(lambda c: _pieces([c, ["--debug"]], _BAD_GLOBAL, 2)),
    head=st.sampled_from([["job", "run"]] * 6 + [["job"], ["run"], ["job", "list"]]),
    after=_pieces(_GOOD_ITEMS, _BAD_ITEMS, 5),
)
def test_what_the_fast_path_reads_typer_reads_the_same(
    before: list[str], head: list[str], after: list[str]
) -> None:
    argv = [*before, *head, *after]
    call = parse_job_run(argv)
    event("read without typer" if call is not None else "left to typer")
    if call is None:
        return
    code, calls = _what_typer_passes(argv)
    assert (code, calls) == (1, [call]), argv


@pytest.mark.parametrize("piece", _GOOD_ITEMS + _BAD_ITEMS, ids=" ".join)
def test_each_piece_alone_is_read_as_typer_reads_it_or_left_to_typer(piece: list[str]) -> None:
    argv = ["-c", "/c", "job", "run", "nightly", *piece]
    call = parse_job_run(argv)
    assert (call is None) == (piece in _BAD_ITEMS)
    if call is not None:
        assert _what_typer_passes(argv) == (1, [call])


def test_a_job_run_does_not_load_typer(run_hcbak: RunHcbak, tmp_path: Path) -> None:
    """The point of the fast path, checked on a real process: `-X importtime` lists
    every module a run imports."""
    config = tmp_path / "config.yaml"
    config.write_text("clusters: {}\n")
    runs = {
        argv: run_hcbak(*argv, env={"PYTHONPROFILEIMPORTTIME": "1"})
        for argv in (("job", "run", "--due", "--json"), ("job", "list"))
    }
    due, listing = runs[("job", "run", "--due", "--json")], runs[("job", "list")]
    assert due.returncode == 0, due.stderr[-2000:]
    assert json.loads(due.stdout)["jobs"] == []
    assert " typer" not in due.stderr
    assert " typer" in listing.stderr  # the check sees typer where it is loaded


@pytest.fixture
def config_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config whose job `nightly` stores into an encrypted repository."""
    monkeypatch.setenv("HCBAK_TEST_PASSPHRASE", "early bird")
    monkeypatch.setenv("HCBAK_TEST_PW", "unused")
    init_repo(tmp_path / "repo", passphrase=Secret("early bird"))
    path = tmp_path / "config.yaml"
    save_config(
        Config(
            path=path,
            clusters={
                "lab": ClusterConfig(
                    name="lab",
                    nodes=["127.0.0.1:1"],
                    username="u",
                    password=SecretRef(env="HCBAK_TEST_PW"),
                    tls=TLSConfig(insecure=True),
                )
            },
            repositories={
                "main": RepoConfig(
                    name="main",
                    path=str(tmp_path / "repo"),
                    passphrase=SecretRef(env="HCBAK_TEST_PASSPHRASE"),
                )
            },
            jobs={"nightly": JobConfig(name="nightly", cluster="lab", repo="main", vms=["web01"])},
        )
    )
    return path


def test_one_scrypt_serves_the_script_the_job_run_and_the_open(
    config_path: Path, scrypt_calls: list[str]
) -> None:
    start_job_key_early(JobRun(config_path, False, ["nightly"]))
    assert len(kdf._early) == 1  # started before the CLI even loads
    config = load_config(config_path)
    derive_repository_key_early(config, config.jobs["nightly"])  # what `job run` does
    repo_path = config.repositories["main"].path
    with open_repo(repo_path, passphrase=Secret("early bird"), lock=None):
        pass
    assert scrypt_calls == ["hcbak-kdf"]  # one scrypt, in the early thread, for all three


@pytest.mark.parametrize("text", ["jobs: [unclosed\n", ""])
def test_a_config_it_cannot_use_is_left_for_the_cli_to_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    started = dict(kdf._early)
    start_job_key_early(JobRun(path, False, ["nightly"]))  # never raises
    start_job_key_early(JobRun(tmp_path / "missing.yaml", False, ["x"]))
    assert kdf._early == started
