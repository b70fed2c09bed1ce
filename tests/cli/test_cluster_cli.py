"""`hcbak cluster ...` through the real entry point (subprocesses, real files)."""

from __future__ import annotations

import hashlib
import json
import ssl
import stat
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from harness import HCBAK, RunHcbak

from .helpers import FP, expect

ADD = ["cluster", "add", "prod", "--node", "10.0.0.11", "--node", "10.0.0.12:8443"]
CREDS = ["--username", "hcbak", "--password-env", "HCBAK_TEST_PW"]
PIN = ["--fingerprint", f"10.0.0.11={FP}"]


def test_commands_on_missing_config_suggest_cluster_add(
    run_hcbak: RunHcbak, run_inproc: RunHcbak
) -> None:
    expect(run_hcbak("cluster", "list"), 2, "config file does not exist", "hcbak cluster add")
    for args in (["job", "list"], ["config", "check"], ["cluster", "remove", "x"]):
        expect(run_inproc(*args), 2, "config file does not exist", "hcbak cluster add")


def test_add_creates_config_0600_and_list_show_report_it(
    run_hcbak: RunHcbak, run_inproc: RunHcbak, config_path: Path
) -> None:
    proc = run_hcbak(*ADD, *CREDS, *PIN, "--worker-vm", "hcbak-worker", "--device-root", "/d")
    expect(proc, 0, "cluster 'prod' saved")
    assert stat.S_IMODE(config_path.stat().st_mode) == 0o600
    saved = yaml.safe_load(config_path.read_text())["clusters"]["prod"]
    assert saved["nodes"] == ["10.0.0.11", "10.0.0.12:8443"]
    assert saved["password_env"] == "HCBAK_TEST_PW"
    assert saved["tls"] == {"fingerprints": {"10.0.0.11": FP}}

    listed = run_inproc("cluster", "list", check=True)
    assert listed.stdout.splitlines()[0].split("\t")[:3] == ["NAME", "NODES", "USERNAME"]
    assert "prod\t10.0.0.11,10.0.0.12:8443\thcbak" in listed.stdout
    as_json = json.loads(run_inproc("cluster", "list", "--json", check=True).stdout)["clusters"]
    assert [c["name"] for c in as_json] == ["prod"]
    shown = json.loads(run_inproc("cluster", "show", "prod", "--json", check=True).stdout)
    assert shown == as_json[0]
    assert shown["password"] == {"source": "env", "ref": "HCBAK_TEST_PW"}
    assert shown["worker_vm"] == "hcbak-worker" and shown["device_root"] == "/d"
    assert set(shown) == {
        "name", "nodes", "username", "password", "tls", "worker_vm", "device_root",
        "timeouts", "retries",
    }  # fmt: skip
    text = run_inproc("cluster", "show", "prod", check=True).stdout
    assert "environment variable HCBAK_TEST_PW" in text and f"sha256 {FP}" in text


def test_duplicate_name_is_refused_unless_force(run_inproc: RunHcbak, config_path: Path) -> None:
    run_inproc(*ADD, *CREDS, "--insecure", check=True)
    expect(run_inproc(*ADD, *CREDS, "--insecure"), 2, "cluster 'prod' already exists", "--force")
    expect(
        run_inproc(*ADD, "--username", "other", "--password-file", "/etc/pw", *PIN, "--force"), 0
    )
    saved = yaml.safe_load(config_path.read_text())["clusters"]["prod"]
    assert saved["username"] == "other" and saved["password_file"] == "/etc/pw"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["cluster", "add", "prod/x", "--node", "h", *CREDS, "--insecure"], "may contain only"),
        (["cluster", "add", "p", "--node", "h:0", *CREDS, "--insecure"], "bad port"),
        (["cluster", "add", "p", "--node", "a b", *CREDS, "--insecure"], "not a host name"),
        (["cluster", "add", "p", "--node", "h", *CREDS], "choose how to trust"),
        (["cluster", "add", "p", "--node", "h", "--username", "u", "--insecure"], "no password"),
        (["cluster", "add", "p", "--node", "h", *CREDS, "--fingerprint", "x=ab"], "not one of"),
        (["cluster", "add", "p", "--node", "h", *CREDS, "--fingerprint", "h=zz"], "SHA-256"),
        (["cluster", "add", "p", "--node", "h", *CREDS, "--insecure", "--ca-file", "c"],
         "combined"),
        (["cluster", "add", "p", "--node", "h", *CREDS, "--password-file", "f", "--insecure"],
         "only one of"),
        (["cluster", "add", "p", "--node", "h", "-u", "u", "--password", "s3cret"],
         "No such option"),
        (["cluster", "add", "p", "--node", "h", *CREDS, "--ca-file", "/nonexistent.pem"],
         "--ca-file: /nonexistent.pem is not a file"),
        (["cluster", "add", "p", "--node", "h", *CREDS, "--ca-file", __file__],  # not PEM
         f"--ca-file: cannot use CA file {__file__}:"),
        (["cluster", "show", "prd"], "did you mean 'prod'?"),
    ],
)  # fmt: skip
def test_bad_cluster_input_exits_2_with_reason(
    run_inproc: RunHcbak, base_config: Path, args: list[str], message: str
) -> None:
    expect(run_inproc(*args), 2, message)


def test_remove_refuses_cluster_used_by_a_job_and_names_it(
    run_inproc: RunHcbak, base_config: Path
) -> None:
    run_inproc("job", "create", "nightly", "--cluster", "prod", "--repo", "main", "--vm", "web01",
              check=True)  # fmt: skip
    expect(run_inproc("cluster", "remove", "prod"), 2, "used by job(s) nightly")
    run_inproc("job", "remove", "nightly", check=True)
    expect(run_inproc("cluster", "remove", "prod"), 0, "cluster 'prod' removed")
    assert yaml.safe_load(base_config.read_text())["clusters"] == {}


def test_unreadable_password_file_is_shown_as_reference_and_fails_at_use(
    run_hcbak: RunHcbak, run_inproc: RunHcbak, config_path: Path, tmp_path: Path
) -> None:
    # A directory cannot be read as a file even by root (tests may run as root,
    # where chmod 000 would not stop the read).
    pw_path = tmp_path / "pw-dir"
    pw_path.mkdir()
    run_inproc(*ADD, "--username", "u", "--password-file", str(pw_path), "--insecure", check=True)
    shown = run_inproc("cluster", "show", "prod", check=True)
    assert f"file {pw_path}" in shown.stdout
    expect(run_hcbak("config", "check"), 2, "clusters.prod.password", f"{pw_path}", "read")


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A real TLS listener on 127.0.0.1 with a fresh self-signed certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "node")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    import socket

    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            try:
                with ctx.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    fingerprint = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    yield f"127.0.0.1:{sock.getsockname()[1]}", fingerprint
    stop.set()
    thread.join()
    sock.close()


def test_trust_on_first_use_pins_the_certificate_the_node_presents(
    run_hcbak: RunHcbak, config_path: Path, tls_server: tuple[str, str]
) -> None:
    address, fingerprint = tls_server
    proc = run_hcbak("cluster", "add", "lab", "--node", address, *CREDS, "--trust-on-first-use")
    expect(proc, 0, f"pinned {address}: sha256 {fingerprint}")
    saved = yaml.safe_load(config_path.read_text())["clusters"]["lab"]
    assert saved["tls"]["fingerprints"] == {address: fingerprint}


def _run_on_tty(
    hcbak_env: dict[str, str], args: list[str], dialogue: list[tuple[str, str]]
) -> tuple[int, str]:
    """Run hcbak with a pseudo-terminal as stdin (a real TTY); answer each prompt once it
    appears (hidden prompts flush input typed ahead of them, like a real terminal)."""
    import os
    import pty
    import select
    import subprocess
    import time

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [*HCBAK, *args],
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=hcbak_env,
        start_new_session=True,  # no controlling terminal: prompts read the pty on stdin
    )
    os.close(slave)
    assert proc.stdout is not None
    out = b""
    deadline = time.monotonic() + 60
    pending = list(dialogue)
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            out += chunk
        if pending and out.decode(errors="replace").count(pending[0][0]) >= _seen(
            dialogue, pending
        ):
            time.sleep(0.2)  # let the prompt switch the terminal mode first
            os.write(master, pending.pop(0)[1].encode())
    code = proc.wait(timeout=30)
    os.close(master)
    return code, out.decode(errors="replace")


def _seen(dialogue: list[tuple[str, str]], pending: list[tuple[str, str]]) -> int:
    """How many times the next prompt text must have appeared (prompts may repeat)."""
    done = dialogue[: len(dialogue) - len(pending)]
    return 1 + sum(1 for prompt, _ in done if prompt == pending[0][0])


def test_on_a_terminal_password_is_prompted_and_fingerprints_confirmed(
    hcbak_env: dict[str, str], config_path: Path, tls_server: tuple[str, str]
) -> None:
    address, fingerprint = tls_server
    args = ["cluster", "add", "lab", "--node", address, "--username", "u"]
    secret = [("Password:", "tty-Secret-1\n"), ("Repeat for confirmation:", "tty-Secret-1\n")]
    code, out = _run_on_tty(hcbak_env, args, [*secret, ("Trust these", "y\n")])
    assert code == 0, out
    assert f"{address}: sha256 {fingerprint}" in out and "Trust these certificates?" in out
    assert "tty-Secret-1" not in out
    assert stat.S_IMODE(config_path.stat().st_mode) == 0o600
    saved = yaml.safe_load(config_path.read_text())["clusters"]["lab"]
    assert saved["password"] == "tty-Secret-1"
    assert saved["tls"]["fingerprints"] == {address: fingerprint}

    code, out = _run_on_tty(hcbak_env, [*args[:2], "lab2", *args[3:]], [*secret, ("Trust", "n\n")])
    assert code == 2 and "certificates not trusted" in out
    assert "lab2" not in config_path.read_text()
