"""`hcbak init` driven through a real pseudo-terminal (pexpect) against the simulator.

The wizard runs as the real program, reads its answers from a pty like a person's
terminal, and talks HTTPS to the simulated cluster, a real aiosmtpd server and a real
repository folder. Nothing is mocked.
"""

from __future__ import annotations

import io
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pexpect
import pytest
from engine.smtp_server import Inbox, smtp_server
from harness import HCBAK

from hcbak.cli.sim import sim_cluster_config
from hcbak.config import config_to_dict, load_config, save_config
from hcbak.sim import Simulator

MiB = 1 << 20
CLUSTER_PW = "HCBAK_TEST_INIT_CLUSTER_PW"
REPO_PW = "HCBAK_TEST_INIT_REPO_PW"
# A config that already exists, with a comment and a layout hcbak would not write: a
# Ctrl-C must leave exactly these bytes.
EXISTING = """\
# hand-written, keep this comment
clusters:
  prod: {nodes: [10.0.0.11], username: hcbak, password_env: HCBAK_TEST_PW,
         tls: {insecure: true}}
repositories:
  main: {path: /srv/hcbak}
"""


@dataclass
class Setup:
    tmp: Path
    sim: Simulator
    inbox: Inbox
    env: dict[str, str]
    config: Path


@pytest.fixture
def setup(tmp_path: Path, hcbak_env: dict[str, str]) -> Iterator[Setup]:
    with Simulator(tmp_path / "sim", nodes=2, task_delay=0.005) as sim, smtp_server() as inbox:
        sim.create_vm("web01", [1 * MiB], tags=["nightly"])
        sim.create_vm("db01", [1 * MiB], tags=["nightly"])
        sim.create_vm("mail01", [1 * MiB], state="SHUTOFF")
        config = Path(hcbak_env["HCBAK_CONFIG"])
        config.write_text(EXISTING)
        config.chmod(0o600)
        env = {
            **hcbak_env,
            CLUSTER_PW: sim.backup_user[1],
            REPO_PW: "correct horse battery staple",
            "HCBAK_TEST_INIT_WRONG": "not the password",
            "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
            "TERM": "dumb",
        }
        yield Setup(tmp_path, sim, inbox, env, config)


class Wizard:
    """One `hcbak init` on a pty; `ask` waits for a question and answers it."""

    def __init__(self, s: Setup, *args: str) -> None:
        self.s = s
        self.log = io.StringIO()
        self.child = pexpect.spawn(
            HCBAK[0], [*HCBAK[1:], *args], env=s.env, encoding="utf-8",
            timeout=30, dimensions=(60, 200),
        )  # fmt: skip
        self.child.logfile_read = self.log

    def ask(self, question: str, answer: str, *, then: str | None = None) -> None:
        """Answer `question`; with `then`, expect that text next (the reason of a refusal)."""
        self.child.expect_exact(question)
        self.child.expect_exact(": ")
        self.child.sendline(answer)
        if then is not None:
            self.child.expect_exact(then)

    def refused(self, question: str, bad: str, reason: str, good: str) -> None:
        """A bad answer is refused with `reason` and the same question comes back."""
        self.ask(question, bad, then="not accepted: ")
        self.expect(reason)
        self.ask(question, good)

    def expect(self, text: str) -> None:
        self.child.expect_exact(text)

    def interrupt_at(self, heading: str, question: str) -> None:
        """Reach `heading` and its first question, then press Ctrl-C there."""
        self.expect(heading)
        self.expect(question)
        self.child.sendintr()
        self.expect("Stopped:")

    def finish(self) -> int:
        self.child.expect(pexpect.EOF, timeout=60)
        self.child.close()
        return int(self.child.exitstatus if self.child.exitstatus is not None else -1)

    # --- valid answers, step by step -----------------------------------------------------
    def step1(self) -> None:
        self.ask("Folder where attached disks appear", str(self.s.sim.device_root))

    def step2(self) -> None:
        sim = self.s.sim
        self.ask("Cluster name", "")
        self.ask("Address of one node", sim.node_addresses[0])
        self.ask("Trust it?", "y")
        self.ask("HyperCore user name", sim.backup_user[0])
        self.ask("Password source", f"env:{CLUSTER_PW}")
        self.ask("Use these node addresses?", "y")
        self.ask("Trust these certificates too?", "y")
        self.ask("Worker VM", "hcbak-worker")
        self.expect("$ hcbak cluster add")  # the draft holds a cluster from here on
        self.ask("Run the probe now", "n")

    def step3(self) -> None:
        self.ask("Repository name", "")
        self.ask("Repository folder", str(self.s.tmp / "repo"))
        self.ask("Encrypt the backups", "y")
        self.ask("Passphrase source", f"env:{REPO_PW}")
        self.expect("$ hcbak repo add")

    def step5(self) -> None:
        self.ask("Job name", "")
        self.ask("Back up which VMs?", "tag:nightly")
        self.ask("Leave out which of them?", "")
        self.ask("Retention", "")
        self.ask("Schedule", "")


def test_full_walk_refuses_a_bad_answer_at_each_step_backs_up_and_prints_a_replayable_script(
    setup: Setup,
) -> None:
    s = setup
    w = Wizard(s, "init", "--install")
    # 1: this host
    w.expect("Step 1 of 6")
    w.refused("Folder where attached disks appear", "/no/such/dev", "/no/such/dev does not exist",
              str(s.sim.device_root))  # fmt: skip
    # 2: the cluster; the node list comes from the first node, fingerprints are shown
    w.expect("Step 2 of 6")
    w.ask("Cluster name", "", then=None)  # default prod2: prod is taken
    w.refused("Address of one node", "bad host!", "", s.sim.node_addresses[0])
    w.expect(s.sim.fingerprints[0])
    w.ask("Trust it?", "y")
    w.ask("HyperCore user name", s.sim.backup_user[0])
    w.refused("Password source", "hunter2", "give env:VARIABLE", "env:HCBAK_TEST_INIT_WRONG")
    w.expect("not accepted: cluster prod2 refused the login of user 'hcbak-backup'")
    w.ask("HyperCore user name", s.sim.backup_user[0])
    w.ask("Password source", f"env:{CLUSTER_PW}")
    w.expect(f"node(s): {', '.join(s.sim.node_addresses)}")
    w.ask("Use these node addresses?", "y")
    w.expect(s.sim.fingerprints[1])
    w.ask("Trust these certificates too?", "y")
    w.refused("Worker VM", "nope", "no VM 'nope' on the cluster", "hcbak-worker")
    w.expect("$ hcbak cluster add prod2 --node")
    w.expect("$ hcbak cluster test prod2")
    w.ask("Run the probe now", "n")
    # 3: the repository
    w.expect("Step 3 of 6")
    w.ask("Repository name", "")
    (s.tmp / "a-file").write_text("x")
    w.refused("Repository folder", str(s.tmp / "a-file"), "is a file, not a folder",
              str(s.tmp / "repo"))  # fmt: skip
    w.ask("Encrypt the backups", "y")
    w.refused("Passphrase source", "env:HCBAK_TEST_INIT_UNSET", "HCBAK_TEST_INIT_UNSET",
              f"env:{REPO_PW}")  # fmt: skip
    w.expect("Keep a copy of the passphrase somewhere other than this host")
    # 4: email, with a test message through a real SMTP server
    w.expect("Step 4 of 6")
    w.ask("Send job reports by email?", "y")
    w.ask("SMTP server", s.inbox.host)
    w.refused("Security", "tls", "'tls' is not one of starttls, ssl, none", "none")
    w.ask("Port", str(s.inbox.port))
    w.ask("Sender address", "hcbak@example.com")
    w.refused("Send reports to", "ops", "'ops' is not an email address", "ops@example.com")
    w.ask("SMTP user name", "")
    w.expect("Check that the test message reached ops@example.com")
    # 5: the job, from the live VM list
    w.expect("Step 5 of 6")
    w.ask("Job name", "")
    for vm in ("db01", "mail01", "web01"):  # the live list, by name
        w.expect(vm)
    w.refused("Back up which VMs?", "web99", "no VM named 'web99'", "tag:nightly")
    w.refused("Leave out which of them?", "mail01", "'mail01' is not among the selected VMs",
              "db01")  # fmt: skip
    w.refused("Retention", "9", "choose a number from 1 to 4", "1")
    w.refused("Schedule", "61 * * * *", "not a preset number nor a cron expression", "1")
    # 6: the first run with the live view, the scheduling lines, the save, the timer
    w.expect("Step 6 of 6")
    w.ask("Back up now", "maybe", then="Error: invalid input")
    w.ask("Back up now", "y")
    w.expect("$ hcbak job run nightly")
    w.expect("OnCalendar=")
    w.ask("Write this config to", "y")
    w.ask("Write the systemd timer and service now?", "y")
    w.expect("The same setup, for scripts")
    assert w.finish() == 0, w.log.getvalue()
    transcript = w.log.getvalue()

    config = load_config(s.config)
    job = config.jobs["nightly"]
    assert (job.cluster, job.repo, job.tags, job.exclude) == ("prod2", "main2", ["nightly"],
                                                              ["db01"])  # fmt: skip
    assert (job.retention.keep_daily, job.retention.keep_weekly) == (14, 8)
    assert job.schedule == "0 1 * * *" and job.notify and job.notify.to == ["ops@example.com"]
    assert config.clusters["prod"].nodes == ["10.0.0.11"]  # what was there stays
    assert config.clusters["prod2"].tls.fingerprints == dict(
        zip(s.sim.node_addresses, s.sim.fingerprints, strict=True)
    )
    assert s.sim.device_root.samefile(config.clusters["prod2"].device_root)
    assert len(s.inbox.messages) == 1
    assert (s.tmp / "xdg" / "systemd" / "user" / "hcbak.timer").is_file()
    points = _hcbak(s, "points", "list", "--repo", "main2", "--json")
    assert {p["vm"] for p in _json(points)} == {"web01"}
    # no secret in anything printed: only the references
    for secret in (s.env[CLUSTER_PW], s.env[REPO_PW], "not the password"):
        assert secret not in transcript

    # The printed commands, replayed in a shell on the same starting config, build the
    # same config (the repository is adopted: same id).
    script = transcript.split("The same setup, for scripts")[1]
    lines = [ln.strip() for ln in script.splitlines() if ln.strip().startswith("hcbak ")]
    assert [shlex.split(ln)[1:3] for ln in lines] == [
        ["cluster", "add"], ["repo", "add"], ["notify", "smtp"], ["job", "create"],
    ]  # fmt: skip
    replayed = s.tmp / "replayed.yaml"
    replayed.write_text(EXISTING)
    replayed.chmod(0o600)
    proc = subprocess.run(
        ["sh", "-c", "set -e\n" + "\n".join(lines)],
        env={**s.env, "HCBAK_CONFIG": str(replayed)},
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert _parsed(replayed) == _parsed(s.config)


STEPS = [
    (1, "Folder where attached disks appear"),
    (2, "Cluster name"),
    (3, "Repository name"),
    (4, "Send job reports by email?"),
    (5, "Job name"),
    (6, "Back up now"),
]


@pytest.mark.parametrize(("step", "question"), STEPS, ids=[f"step{n}" for n, _ in STEPS])
def test_ctrl_c_at_any_step_leaves_the_config_byte_identical(
    setup: Setup, step: int, question: str
) -> None:
    s = setup
    before = s.config.read_bytes()
    w = Wizard(s, "init")
    if step > 1:
        w.step1()
    if step > 2:
        w.step2()
    if step > 3:
        w.step3()
    if step > 4:
        w.ask("Send job reports by email?", "n")
    if step > 5:
        w.step5()
        w.expect("$ hcbak job create")
    w.interrupt_at(f"Step {step} of 6", question)
    assert w.finish() == 130, w.log.getvalue()
    assert s.config.read_bytes() == before
    assert "Traceback" not in w.log.getvalue()


def test_ctrl_c_during_the_first_backup_stops_init_and_saves_nothing(setup: Setup) -> None:
    """Ctrl-C inside a command init runs (here the first backup, slowed down so the key
    lands mid-run) ends init like one at a question: nothing saved."""
    s = setup
    before = s.config.read_bytes()
    w = Wizard(s, "init")
    w.step1()
    w.step2()
    w.step3()
    w.ask("Send job reports by email?", "n")
    w.step5()
    s.sim.faults.task_delay(1.0)  # the snapshot task now takes a second
    w.ask("Back up now", "y")
    w.expect("$ hcbak job run nightly")
    w.expect("nightly: cluster prod2")  # the run has started
    w.child.sendintr()
    w.expect("Stopped:")
    assert w.finish() == 130, w.log.getvalue()
    run_output = w.log.getvalue().split("$ hcbak job run nightly")[1]
    assert "interrupted" in run_output and "Write this config" not in run_output
    assert s.config.read_bytes() == before


def test_a_failed_email_test_can_be_skipped_and_leaves_no_smtp_behind(setup: Setup) -> None:
    s = setup
    w = Wizard(s, "init")
    w.step1()
    w.step2()
    w.step3()
    w.ask("Send job reports by email?", "y")
    w.ask("SMTP server", "127.0.0.1")
    w.ask("Security", "none")
    w.ask("Port", "9")  # discard: nothing listens there
    w.ask("Sender address", "hcbak@example.com")
    w.ask("Send reports to", "ops@example.com")
    w.ask("SMTP user name", "")
    w.expect("$ hcbak notify test --to ops@example.com")
    w.ask("The test message was not sent", "s")
    w.expect("Step 5 of 6")
    w.step5()
    w.ask("Back up now", "n")
    w.ask("Write this config to", "y")
    assert w.finish() == 0, w.log.getvalue()
    config = load_config(s.config)
    assert config.smtp is None and config.jobs["nightly"].notify is None
    script = w.log.getvalue().split("The same setup, for scripts")[1]
    assert "notify smtp" not in script and "hcbak job create nightly" in script


def test_without_a_terminal_init_exits_2_pointing_to_the_commands(setup: Setup) -> None:
    proc = subprocess.run([*HCBAK, "init"], env=setup.env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60)  # fmt: skip
    assert proc.returncode == 2
    (line,) = proc.stderr.splitlines()
    assert line.startswith("error: hcbak init asks questions and needs a terminal")
    assert "hcbak cluster add, repo add" in line


def test_job_create_without_a_selection_on_a_terminal_asks_step_5_alone(setup: Setup) -> None:
    s = setup
    config = load_config(s.config)
    config.clusters["lab"] = sim_cluster_config(s.sim, "lab", password_env=CLUSTER_PW)
    save_config(config)
    w = Wizard(s, "job", "create", "web", "--cluster", "lab", "--repo", "main", "--keep-last", "3")
    w.ask("Back up which VMs?", "web01, mail01")
    w.refused("Schedule", "every day", "not a preset number nor a cron expression", "0 3 * * *")
    w.expect("The same job, for scripts:")
    w.expect("hcbak job create web --cluster lab --repo main --vm web01 --vm mail01 "
             "--keep-last 3 --schedule '0 3 * * *'")  # fmt: skip
    assert w.finish() == 0, w.log.getvalue()
    assert "Retention" not in w.log.getvalue()  # given by a flag: not asked
    job = load_config(s.config).jobs["web"]
    assert (job.vms, job.retention.keep_last, job.schedule) == (["web01", "mail01"], 3,
                                                                "0 3 * * *")  # fmt: skip


def _hcbak(s: Setup, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*HCBAK, *args], env=s.env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc


def _json(proc: subprocess.CompletedProcess[str]) -> Any:
    import json

    data = json.loads(proc.stdout)
    return data["points"] if isinstance(data, dict) else data


def _parsed(path: Path) -> dict[str, Any]:
    return config_to_dict(load_config(path))
