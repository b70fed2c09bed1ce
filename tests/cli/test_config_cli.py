"""`hcbak config show|check` and config-file errors as every command reports them."""

from __future__ import annotations

import json
from pathlib import Path

from harness import RunHcbak

from .helpers import BASE, expect

SENTINEL = "sentinel-Pw-8c41"


def test_broken_yaml_reports_the_line(run_hcbak: RunHcbak, config_path: Path) -> None:
    config_path.write_text("clusters:\n  prod:\n    nodes: [a, b\n  x: 1\n")
    proc = run_hcbak("cluster", "list")
    expect(proc, 2, f"{config_path}:4: invalid YAML")


def test_unknown_key_reports_line_and_did_you_mean(run_inproc: RunHcbak, config_path: Path) -> None:
    config_path.write_text(BASE.replace("username:", "usename:"))
    proc = run_inproc("job", "list")
    expect(
        proc, 2, f"{config_path}:4: clusters.prod.usename: unknown key", "did you mean 'username'?"
    )


def test_world_readable_config_with_inline_secret_is_refused(
    run_hcbak: RunHcbak, config_path: Path
) -> None:
    config_path.write_text(BASE.replace("password_env: HCBAK_TEST_PW", f"password: {SENTINEL}"))
    config_path.chmod(0o644)
    proc = run_hcbak("cluster", "list")
    expect(proc, 2, "inline secret", "chmod 600")
    assert SENTINEL not in proc.stderr + proc.stdout


def test_inline_secret_never_printed(
    run_hcbak: RunHcbak, run_inproc: RunHcbak, config_path: Path
) -> None:
    config_path.write_text(BASE.replace("password_env: HCBAK_TEST_PW", f"password: {SENTINEL}"))
    config_path.chmod(0o600)
    outputs = [
        run_inproc("config", "show", check=True),
        run_inproc("config", "show", "--json", check=True),
        run_inproc("cluster", "show", "prod", "--json", check=True),
        run_inproc("cluster", "show", "prod", check=True),
        run_inproc("config", "check", check=True),
        run_hcbak("--debug", "cluster", "show", "nope"),  # traceback printed, secret not
    ]
    for proc in outputs:
        assert SENTINEL not in proc.stdout + proc.stderr
    assert "password: '***'" in outputs[0].stdout
    assert json.loads(outputs[2].stdout)["password"] == {"source": "inline", "ref": None}


def test_config_show_json_and_check_report_the_config(
    run_inproc: RunHcbak, base_config: Path
) -> None:
    shown = json.loads(run_inproc("config", "show", "--json", check=True).stdout)
    assert shown["path"] == str(base_config)
    assert shown["clusters"]["prod"]["password_env"] == "HCBAK_TEST_PW"
    assert shown["repositories"]["main"]["block_size"] == "1MiB"
    expect(run_inproc("config", "check"), 2, "HCBAK_TEST_PW is not set")
    ok = run_inproc("config", "check", env={"HCBAK_TEST_PW": "x"}, check=True)
    assert "ok (1 cluster, 1 repository, 0 jobs)" in ok.stdout
    report = json.loads(run_inproc("config", "check", "--no-secrets", "--json", check=True).stdout)
    assert report["ok"] is True and report["clusters"] == 1


def test_unknown_command_and_flag_exit_2(
    run_hcbak: RunHcbak, run_inproc: RunHcbak, base_config: Path
) -> None:
    expect(run_hcbak("frobnicate"), 2, "No such command")
    expect(run_inproc("cluster", "list", "--jsn"), 2, "No such option")
    expect(run_inproc("cluster", "lst"), 2, "No such command")
    expect(run_inproc("job", "create"), 2, "Missing argument")
