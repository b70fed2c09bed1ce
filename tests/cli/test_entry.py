"""The console script starts `job run`'s key derivation before the CLI loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from hcbak.cli.entry import job_run_target, start_job_key_early
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
        (["job", "run", "nightly"], (None, "nightly")),
        (["--config", "/x.yaml", "job", "run", "a", "b"], ("/x.yaml", "a")),
        (["-c", "/x", "--debug", "job", "run", "--parallel", "2", "a"], ("/x", "a")),
        (["--config=/y", "job", "run", "--all", "--json"], ("/y", None)),
        (["job", "run", "--full", "--dry-run", "b"], (None, "b")),
        (["job", "run", "--due"], None),
        (["job", "run", "a", "--help"], None),
        (["job", "run"], None),
        (["job", "list"], None),
        (["repo", "verify", "main"], None),
        (["--config"], None),
        ([], None),
    ],
)
def test_the_job_run_target_is_read_from_the_arguments(
    argv: list[str], expected: tuple[str | None, str | None] | None
) -> None:
    assert job_run_target(argv) == expected


@pytest.fixture
def config_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config whose job `nightly` stores into an encrypted repository."""
    monkeypatch.setenv("HCBAK_TEST_PASSPHRASE", "early bird")
    monkeypatch.setenv("HCBAK_TEST_PW", "unused")
    init_repo(tmp_path / "repo", passphrase=Secret("early bird"), kdf_n=1 << 10)
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
    start_job_key_early(["--config", str(config_path), "job", "run", "nightly"])
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
    start_job_key_early(["--config", str(path), "job", "run", "nightly"])  # never raises
    start_job_key_early(["--config", str(tmp_path / "missing.yaml"), "job", "run", "x"])
    assert kdf._early == started
