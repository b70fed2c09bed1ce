"""`hcbak sim serve` as a real process: prints how to connect, serves, stops on SIGTERM."""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import signal
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from harness import HCBAK


def _start(
    env: dict[str, str], state: Path, *extra: str
) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen(
        [*HCBAK, "sim", "serve", "--state", str(state), *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if "hcbak cluster add" in line:
            return proc, lines
    proc.kill()
    raise AssertionError(f"serve did not print its banner: {lines} {proc.stderr.read()}")  # type: ignore[union-attr]


def test_serve_prints_connection_details_that_work_and_stops_on_sigterm(
    hcbak_env: dict[str, str], tmp_path: Path
) -> None:
    proc, lines = _start(hcbak_env, tmp_path / "sim", "--nodes", "2", "--seed")
    try:
        nodes = [ln.split() for ln in lines if ln.strip().startswith("node ")]
        assert len(nodes) == 2
        url, fingerprint = nodes[0][1], nodes[0][3]
        host, port = url.removeprefix("https://").split(":")
        der = ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate((host, int(port))))
        assert hashlib.sha256(der).hexdigest() == fingerprint

        curl_line = next(ln for ln in lines if ln.strip().startswith("curl "))
        argv = shlex.split(curl_line)
        if shutil.which("curl"):
            out = subprocess.run([*argv, "-s", "--max-time", "10"], capture_output=True, text=True)
            vms = json.loads(out.stdout)
        else:  # pragma: no cover - curl is part of the documented example
            pytest.skip("curl not installed")
        assert {"web01", "db01", "hcbak-worker"} <= {v["name"] for v in vms}

        add = next(ln for ln in lines if "hcbak cluster add" in ln)
        assert f"--fingerprint 127.0.0.1:{port}={fingerprint}" in add
        assert "--password-env HCBAK_SIM_PASSWORD" in add
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_serve_with_port_base_uses_consecutive_ports(
    hcbak_env: dict[str, str], tmp_path: Path
) -> None:
    import socket

    with socket.socket() as probe:  # find a free pair near a free port
        probe.bind(("127.0.0.1", 0))
        base = probe.getsockname()[1]
    proc, lines = _start(hcbak_env, tmp_path / "sim", "--nodes", "2", "--port-base", str(base))
    try:
        urls = [ln.split()[1] for ln in lines if ln.strip().startswith("node ")]
        assert urls == [f"https://127.0.0.1:{base}", f"https://127.0.0.1:{base + 1}"]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
    assert proc.returncode == 0
