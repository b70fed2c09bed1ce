"""The config loader: every error names file, line and field; saves are atomic and 0600.

Runs the real loader on real files in tmp_path (no mocks).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hcbak.config import (
    Config,
    default_config_path,
    jobs_using,
    load_config,
    parse_block_size,
    save_config,
    state_dir,
)
from hcbak.errors import ConfigError, ExitCode, NotFoundError
from hcbak.secrets import Secret, SecretRef

FULL = """\
state_dir: /var/lib/hcbak
smtp: {host: mail.example.com, port: 587, security: starttls, username: u,
       password_env: SMTP_PW, sender: hcbak@example.com}
clusters:
  prod:
    nodes: [10.0.0.11, "10.0.0.12:8443"]
    username: hcbak
    password_env: HCBAK_PROD_PASSWORD
    tls: {fingerprints: {"10.0.0.11": "FINGERPRINT"}}
    worker_vm: hcbak-worker
    device_root: /dev
    timeouts: {connect: 5, read: 30, task: 900, update_wait: 1800}
repositories:
  main: {path: /backup/hcbak, compression: lz4, block_size: 1MiB, passphrase_file: /etc/hcbak/pass,
         repo_id: 8b4c204bcaa6f49c0518a8d97e25fb74}
  fast: {path: /backup/fast, compression: zstd, block_size: 4M}
jobs:
  nightly:
    cluster: prod
    repo: main
    vms: [web01]
    tags: [backup-nightly]
    exclude: [scratch]
    disks: []
    retention: {keep_last: 7, keep_daily: 14, keep_weekly: 8, keep_monthly: 12, keep_yearly: 2,
                keep_within: 2d}
    schedule: "0 1 * * *"
    parallel: 4
    retries: 1
    retry_wait: 60
    alert_after: 36h
    prune: after_run
    quiesce: true
    notify: {email: {to: [ops@example.com], on: [failure, warning]}}
    hooks: {pre: /usr/local/bin/pre.sh, post: /usr/local/bin/post.sh}
""".replace("FINGERPRINT", ":".join(["AB", "12"] * 16))


def _documents() -> st.SearchStrategy[object]:
    """Config-like YAML data: nested mappings and lists of text, numbers, bools, None."""
    keys = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=12)
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | keys
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
        max_leaves=20,
    )


def write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    path.chmod(mode)
    return path


def error_of(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.exit_code == ExitCode.USAGE
    return info.value


def test_full_example_loads_into_typed_model(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL))
    prod = config.cluster("prod")
    assert prod.nodes == ["10.0.0.11", "10.0.0.12:8443"]
    assert prod.password == SecretRef(env="HCBAK_PROD_PASSWORD")
    assert prod.tls.fingerprints["10.0.0.11"] == "ab12" * 16
    assert prod.task_timeout == 900.0
    assert config.repo("main").passphrase == SecretRef(file="/etc/hcbak/pass")
    assert config.repo("main").repo_id == "8b4c204bcaa6f49c0518a8d97e25fb74"  # the pin
    assert config.repo("fast").repo_id is None  # an entry written before pins
    assert config.repo("fast").block_size == 4 * 1024 * 1024
    job = config.job("nightly")
    assert job.retention.keep_within == "2d" and job.retention.keep_yearly == 2
    assert job.notify is not None and job.notify.on == ["failure", "warning"]
    assert (job.pre_hook, job.post_hook) == ("/usr/local/bin/pre.sh", "/usr/local/bin/post.sh")
    assert job.quiesce is True
    assert config.smtp is not None and config.smtp.password == SecretRef(env="SMTP_PW")


def test_save_then_load_gives_the_same_config_with_mode_0600(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL, mode=0o644))
    config.path = tmp_path / "sub" / "saved.yaml"
    save_config(config)
    first = config.path.read_bytes()
    assert stat.S_IMODE(config.path.stat().st_mode) == 0o600
    again = load_config(config.path)
    again_path = again.path
    assert again == config
    save_config(again)
    assert again_path.read_bytes() == first  # deterministic layout
    assert [p.name for p in config.path.parent.iterdir()] == ["saved.yaml"]  # no temp left


def test_empty_file_is_an_empty_config(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    assert config.clusters == {} and config.jobs == {}


def test_missing_file_suggests_cluster_add(tmp_path: Path) -> None:
    err = error_of(tmp_path / "nope.yaml")
    assert "does not exist" in err.one_line() and "hcbak cluster add" in err.one_line()
    assert load_config(tmp_path / "nope.yaml", missing_ok=True) == Config(
        path=tmp_path / "nope.yaml"
    )


def test_broken_yaml_reports_its_line(tmp_path: Path) -> None:
    err = error_of(write(tmp_path, "clusters:\n  prod:\n    nodes: [1.2.3.4\n    username: x\n"))
    assert err.line is not None and err.line >= 3
    assert f"config.yaml:{err.line}: invalid YAML" in err.one_line()


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("jobs:\n  a: &x 1\n  b: *y\n", 3, "undefined alias 'y'"),
        ("jobs:\n  a: @b\n", 2, "character '@'"),
        ("jobs: {a: 1\n", 2, "expected ',' or '}'"),
        ("jobs:\n  - a\n  b: 1\n", 3, "expected <block end>"),
        # An unclosed quote runs to the end of the file: name the line where it opened.
        ('a: 1\nb: "unclosed\nc: 3\nd: 4\n', 2, "a quoted scalar opened here is never closed"),
        ("a: 1\nb: 'x\n\n\n", 2, "a quoted scalar opened here is never closed"),
    ],
)
def test_broken_yaml_is_explained_as_the_python_parser_does(
    tmp_path: Path, text: str, line: int, words: str
) -> None:
    """libyaml composes the config when PyYAML has it; a document it refuses is read
    again by the Python parser, whose messages say which alias, character or token."""
    err = error_of(write(tmp_path, text))
    assert err.line == line, err.one_line()
    assert f"config.yaml:{line}: invalid YAML" in err.one_line()
    assert words in err.one_line()


def test_libyaml_and_python_compose_the_example_config_alike(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hcbak.config import parser as config_module

    example = Path(__file__).resolve().parents[2] / "examples" / "config.yaml"
    text = example.read_text(encoding="utf-8")
    fast = config_module.parse_config(text, example)
    monkeypatch.setattr(config_module, "_LIBYAML_LOADER", None)
    monkeypatch.setattr(config_module, "_last_document", None)
    slow = config_module.parse_config(text, example)
    assert fast == slow and fast.jobs


@settings(max_examples=150, deadline=None)
@given(document=_documents(), flow=st.booleans())
def test_libyaml_nodes_match_the_python_parser(document: object, flow: bool) -> None:
    """Same tags, values and line/column marks, whatever the layout."""
    import yaml

    from hcbak.config import parser as config_module

    if config_module._LIBYAML_LOADER is None:
        pytest.skip("PyYAML without libyaml: only the Python parser is used")
    text = yaml.safe_dump(document, default_flow_style=flow, allow_unicode=True)
    _same_node(config_module._compose_fast(text), yaml.compose(text, Loader=yaml.SafeLoader))


def _same_node(a: object, b: object) -> None:
    import yaml

    assert type(a) is type(b)
    if a is None:
        return
    assert isinstance(a, yaml.Node) and isinstance(b, yaml.Node)
    assert (a.tag, a.start_mark.line, a.start_mark.column) == (
        b.tag,
        b.start_mark.line,
        b.start_mark.column,
    )
    if isinstance(a, yaml.ScalarNode):
        assert a.value == b.value
        return
    assert len(a.value) == len(b.value)
    for x, y in zip(a.value, b.value, strict=True):
        if isinstance(x, tuple):
            _same_node(x[0], y[0])
            _same_node(x[1], y[1])
        else:
            _same_node(x, y)


def test_unknown_key_names_line_and_suggests_the_right_one(tmp_path: Path) -> None:
    text = FULL.replace("keep_daily: 14", "keep_dayly: 14")
    err = error_of(write(tmp_path, text))
    line = text.splitlines().index(next(ln for ln in text.splitlines() if "keep_dayly" in ln)) + 1
    assert f"config.yaml:{line}: jobs.nightly.retention.keep_dayly: unknown key" in str(err)
    assert "did you mean 'keep_daily'?" in err.one_line()


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("  prod:\n", "  prod one:\n", "only letters, digits"),
        ("10.0.0.11, ", "10.0.0.11:99999, ", "bad port"),
        ("10.0.0.11, ", "bad_host!, ", "not a host name"),
        ("compression: lz4", "compression: lzma", "'lzma' is not one of lz4, zstd, none"),
        ("block_size: 1MiB", "block_size: 3MiB", "power of two"),
        ("repo_id: 8b4c", "repo_id: 8B4C", "is not a repository id (32 lowercase hex digits)"),
        ("repo_id: 8b4c204bcaa6f49c0518a8d97e25fb74", "repo_id: 8b4c", "is not a repository id"),
        ("block_size: 1MiB", "block_size: 128KiB", "power of two"),
        ('schedule: "0 1 * * *"', 'schedule: "0 25 * * *"', "cron hour: 25 is outside 0-23"),
        ('schedule: "0 1 * * *"', 'schedule: "0 1 * *"', "needs 5 fields"),
        ("keep_last: 7", "keep_last: -1", "must be >= 0"),
        ("keep_within: 2d", "keep_within: 2 days", "bad duration"),
        ("alert_after: 36h", "alert_after: soon", "bad duration"),
        ("cluster: prod\n", "cluster: prd\n", "no cluster named 'prd' (did you mean 'prod'?)"),
        ("repo: main\n", "repo: mian\n", "no repository named 'mian'"),
        ("parallel: 4", "parallel: 0", "must be >= 1"),
        ("disks: []", "disks: [virtio]", "disk 'virtio' is not a slot number, a disk type"),
        ("parallel: 4", "parallel: four", "must be a whole number"),
        ("on: [failure, warning]", "on: [failure, sometimes]", "'sometimes' is not one of"),
        ("to: [ops@example.com]", "to: [ops]", "'ops' is not an email address"),
        ("security: starttls", "security: tls", "not one of starttls, ssl, none"),
        ("prune: after_run", "prune: always", "not one of after_run, never"),
        ("quiesce: true", "quiesce: yes please", "must be true or false"),
        ("    vms: [web01]\n    tags: [backup-nightly]\n", "", "selects no VMs"),
        ('"10.0.0.11": "', '"10.0.0.99": "', "10.0.0.99 is not one of the cluster's nodes"),
        ("password_env: HCBAK_PROD_PASSWORD", "password_env: A\n    password_file: /x", "only one"),
        ("    password_env: HCBAK_PROD_PASSWORD\n", "", "needs password_env"),
    ],
)
def test_invalid_values_are_reported_with_line_and_field(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    assert old in FULL
    err = error_of(write(tmp_path, FULL.replace(old, new, 1)))
    assert expected in err.one_line()
    assert err.line is not None, err.one_line()
    assert str(err).startswith(f"{tmp_path / 'config.yaml'}:{err.line}: ")


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    err = error_of(write(tmp_path, "clusters: {}\nclusters: {}\n"))
    assert "given twice" in str(err) and err.line == 2


def test_inline_secret_in_readable_config_is_refused(tmp_path: Path) -> None:
    text = FULL.replace("password_env: HCBAK_PROD_PASSWORD", "password: sentinel-pw-123")
    err = error_of(write(tmp_path, text, mode=0o644))
    assert "chmod 600" in err.one_line() and "0644" in err.one_line()
    assert "sentinel-pw-123" not in err.one_line()
    config = load_config(write(tmp_path, text, mode=0o600))
    password = config.cluster("prod").password
    assert password.resolve() == Secret("sentinel-pw-123")
    assert "sentinel-pw-123" not in repr(config)


def test_references_without_inline_secret_may_be_world_readable(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, FULL, mode=0o644)).clusters


def test_unknown_name_lookup_suggests_close_name(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL))
    with pytest.raises(NotFoundError, match="no job named 'nighty'") as info:
        config.job("nighty")
    assert "did you mean 'nightly'" in info.value.one_line()


def test_jobs_using_finds_jobs_by_cluster_or_repo(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL))
    assert jobs_using(config, cluster="prod") == ["nightly"]
    assert jobs_using(config, repo="main") == ["nightly"]
    assert jobs_using(config, repo="fast") == []


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1MiB", 1 << 20),
        ("4M", 4 << 20),
        ("256KiB", 256 << 10),
        ("256k", 256 << 10),
        (1 << 19, 1 << 19),
    ],
)
def test_block_size_accepts_units_and_integers(text: object, size: int) -> None:
    assert parse_block_size(text) == size


def test_default_paths_follow_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HCBAK_CONFIG", str(tmp_path / "c.yaml"))
    monkeypatch.setenv("HCBAK_STATE_DIR", str(tmp_path / "state"))
    assert default_config_path() == tmp_path / "c.yaml"
    assert state_dir(None) == tmp_path / "state"
    monkeypatch.delenv("HCBAK_STATE_DIR")
    config = Config(path=tmp_path / "c.yaml", state_dir=str(tmp_path / "from-config"))
    assert state_dir(config) == tmp_path / "from-config"
    monkeypatch.delenv("HCBAK_CONFIG")
    expected = "/etc/hcbak/config.yaml" if os.geteuid() == 0 else "hcbak/config.yaml"
    assert str(default_config_path()).endswith(expected)


def test_string_fields_keep_their_source_text(tmp_path: Path) -> None:
    text = FULL.replace("password_env: HCBAK_PROD_PASSWORD", "password: 0123")
    text = text.replace("username: hcbak", "username: yes")
    config = load_config(write(tmp_path, text))
    assert config.cluster("prod").password.resolve() == Secret("0123")
    assert config.cluster("prod").username == "yes"


def test_failed_save_reports_a_config_error_and_leaves_no_temp_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL))
    target = tmp_path / "taken"
    target.mkdir()  # os.replace cannot put a file over a directory
    (target / "keep").write_text("x")
    config.path = target
    with pytest.raises(ConfigError, match="could not save the config"):
        save_config(config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "taken"]
    assert (target / "keep").read_text() == "x"


def test_a_second_read_of_the_same_file_reuses_its_yaml_but_builds_a_new_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`job run` reads the config twice; composing the YAML is nearly all of a read.
    An edit in between must be seen, and each read must get its own Config (commands
    change the one they loaded)."""
    import yaml

    composed: list[str] = []
    real = yaml.compose

    def counting(text: str, **kwargs: object) -> object:
        composed.append(text)
        return real(text, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(yaml, "compose", counting)
    monkeypatch.setenv("SMTP_PW", "x")
    text = FULL + f"# {tmp_path}\n"  # not read by any other test of this process
    path = write(tmp_path, text)
    first, second = load_config(path), load_config(path)
    assert len(composed) == 1
    assert first == second and first is not second
    first.jobs.clear()
    assert second.jobs and load_config(path).jobs
    path.write_text(text.replace("keep_last: 7", "keep_last: 9"))
    third = load_config(path)
    assert len(composed) == 2
    assert [j.retention.keep_last for j in third.jobs.values()] == [9]
