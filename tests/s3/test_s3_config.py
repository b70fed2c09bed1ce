"""S3 repositories in the config and on the command line: `repositories.NAME.s3`,
`hcbak repo add --s3`, and the exit code of every way they can be wrong."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hcbak.config import RepoConfig, S3RepoConfig, load_config, parse_config, save_config
from hcbak.errors import ConfigError
from hcbak.secrets import SecretRef

GOOD = """
repositories:
  offsite:
    s3:
      bucket: backups
      prefix: /hcbak/site1/
      endpoint: https://s3.example.com:9000/
      region: eu-central-1
      credentials_file: /etc/hcbak/s3-keys
      upload_parallel: 8
    passphrase_env: PP
"""


def test_an_s3_repository_parses_and_round_trips(tmp_path: Path) -> None:
    config = parse_config(GOOD, tmp_path / "c.yaml")
    repo = config.repo("offsite")
    assert repo.s3 == S3RepoConfig(
        bucket="backups",
        prefix="hcbak/site1",
        endpoint="https://s3.example.com:9000",
        region="eu-central-1",
        credentials=SecretRef(file="/etc/hcbak/s3-keys"),
        upload_parallel=8,
    )
    assert repo.path == "s3://backups/hcbak/site1"
    config.path = tmp_path / "c.yaml"
    save_config(config)
    text = config.path.read_text()
    assert "path:" not in text  # the location is the s3 block
    assert load_config(config.path).repo("offsite") == repo


@pytest.mark.parametrize(
    ("yaml_block", "message"),
    [
        ("path: /x\n    s3: {bucket: backups}", "give either path or s3"),
        ("s3: {bucket: Not_A_Bucket}", "is not an S3 bucket name"),
        ("s3: {bucket: backups, prefix: a/../b}", "not a usable key prefix"),
        ("s3: {bucket: backups, endpoint: ftp://host}", "is not an endpoint URL"),
        ("s3: {bucket: backups, endpoint: 'https://k:s@host'}", "takes no user, password"),
        ("s3: {bucket: backups, upload_parallel: 0}", "must be >= 1"),
        ("s3: {bucket: backups, credentials: AKID:SECRET}", "unknown key"),  # never inline
        ("s3: {bucket: backups, credentials_env: A, credentials_file: B}", "give only one"),
        ("s3: {prefix: x}", "bucket"),
    ],
)
def test_bad_s3_entries_name_the_line(tmp_path: Path, yaml_block: str, message: str) -> None:
    text = f"repositories:\n  r:\n    {yaml_block}\n"
    with pytest.raises(ConfigError, match=message) as caught:
        parse_config(text, tmp_path / "c.yaml")
    assert "c.yaml:" in caught.value.message
    assert "SECRET" not in caught.value.one_line() or "unknown key" in message


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["repo", "add", "r"], "give either --path FOLDER or --s3"),
        (["repo", "add", "r", "--path", "/tmp/x", "--s3", "b-1"], "give either --path"),
        (["repo", "add", "r", "--path", "/tmp/x", "--endpoint", "http://h"], "need --s3"),
        (["repo", "add", "r", "--s3", "Bad_Bucket"], "--s3: 'Bad_Bucket' is not"),
        (["repo", "add", "r", "--s3", "b-1", "--endpoint", "h:9000"], "--endpoint:"),
        (["repo", "add", "r", "--s3", "b-1", "--upload-parallel", "0"], "--upload-parallel"),
        (
            [
                "repo",
                "add",
                "r",
                "--s3",
                "b-1",
                "--credentials-env",
                "A",
                "--credentials-file",
                "B",
            ],
            "give only one of --credentials-env",
        ),
    ],
)
def test_repo_add_s3_usage_errors_exit_2(run_hcbak: Any, argv: list[str], message: str) -> None:
    proc = run_hcbak(*argv)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def keys_env(bucket: Any) -> dict[str, str]:
    return {"S3_KEYS": f"{bucket.env['AWS_ACCESS_KEY_ID']}:{bucket.env['AWS_SECRET_ACCESS_KEY']}"}


def test_repo_add_s3_creates_adopts_and_refuses(run_hcbak: Any, s3_bucket: Any) -> None:
    common = ["--endpoint", s3_bucket.endpoint, "--credentials-env", "S3_KEYS"]
    env = keys_env(s3_bucket)
    made = run_hcbak("repo", "add", "one", "--s3", f"{s3_bucket.name}/a", *common, env=env)
    assert made.returncode == 0, made.stderr
    assert f"created repository one at s3://{s3_bucket.name}/a" in made.stderr
    assert "a/config" in s3_bucket.keys("a/")
    again = run_hcbak("repo", "add", "two", "--s3", f"{s3_bucket.name}/a", *common, env=env)
    assert again.returncode == 0, again.stderr  # an existing repository is adopted
    assert "adopted existing repository" in again.stderr
    listed = run_hcbak("repo", "list", env=env)
    assert f"s3://{s3_bucket.name}/a" in listed.stdout
    checked = run_hcbak("config", "check", env={})  # S3_KEYS unset: the reference fails
    assert checked.returncode == 2
    assert "repositories.one.s3.credentials" in checked.stderr
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="b/notes.txt", Body=b"mine")
    foreign = run_hcbak("repo", "add", "three", "--s3", f"{s3_bucket.name}/b", *common, env=env)
    assert foreign.returncode == 2
    assert "is not empty and is not an hcbak repository" in foreign.stderr


def test_repo_add_s3_errors_have_their_exit_codes(run_hcbak: Any, s3_bucket: Any) -> None:
    common = ["--endpoint", s3_bucket.endpoint, "--credentials-env", "S3_KEYS"]
    env = keys_env(s3_bucket)
    missing = run_hcbak("repo", "add", "m", "--s3", "no-such-bucket-9", *common, env=env)
    assert missing.returncode == 2, missing.stderr
    assert "bucket no-such-bucket-9 does not exist" in missing.stderr
    wrong = run_hcbak("repo", "add", "w", "--s3", s3_bucket.name, *common,
                      env={"S3_KEYS": "AKIAWRONG:wrong-secret-value"})  # fmt: skip
    assert wrong.returncode == 4, wrong.stderr
    assert "refused the S3 credentials" in wrong.stderr
    assert "wrong-secret-value" not in wrong.stderr
    garbled = run_hcbak("repo", "add", "g", "--s3", s3_bucket.name, *common,
                        env={"S3_KEYS": "no-separator-s3cr3t"})  # fmt: skip
    assert garbled.returncode == 2, garbled.stderr
    assert "S3 credentials from environment variable S3_KEYS" in garbled.stderr
    assert "s3cr3t" not in garbled.stderr
    for proc in (missing, wrong, garbled):
        assert "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1  # one line


def test_without_boto3_an_s3_repository_is_a_usage_error(
    tmp_path: Path, hcbak_env: dict[str, str]
) -> None:
    config_path = Path(hcbak_env["HCBAK_CONFIG"])
    config_path.write_text("repositories:\n  remote:\n    s3: {bucket: some-bucket}\n")
    code = (
        "import sys\nsys.modules['boto3'] = None  # as if not installed\n"
        "from hcbak.cli.main import run\nsys.exit(run(['repo', 'show', 'remote']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=hcbak_env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "S3 repositories need boto3" in proc.stderr
    assert "pip install 'hcbak[s3]'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_s3_repo_config_location() -> None:
    assert S3RepoConfig("b").location == "s3://b"
    entry = RepoConfig("r", "s3://b/p", s3=S3RepoConfig("b", "p"))
    assert entry.s3 is not None and entry.s3.location == entry.path
