"""Who holds a lease: this process's identity, and the proof that a holder is gone.

A lock (locks.py) and a run journal (engine/state.py) record `holder_identity()`; only
this machine, in this kernel boot and pid namespace, can prove such a holder dead
(`holder_provably_dead`, `local_holder_gone`). Lease ages use this host's own clock
(`_clock`, CLOCK_BOOTTIME), never another machine's.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

# Test-only: makes this process look like another machine to the others, e.g.
# {"host": "web01", "machine_id": "...", "boot_id": "...", "clock_offset": -1860}
# (clock_offset: seconds added to the wall-clock times it writes into its lock, as a
# machine whose clock is off would). It can only make locks look MORE alive: locks
# written under it are never judged dead by anyone, and a process running under it
# never judges any lock dead (its pid checks would be meaningless).
TEST_IDENTITY_ENV = "HCBAK_TESTONLY_MACHINE_IDENTITY"


def _clock() -> float:
    """This host's clock for lease ages: counts suspended time, never set by anyone."""
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):
        return time.monotonic()


def _read_first_line(path: str) -> str:
    try:
        with open(path, encoding="ascii") as fh:
            return fh.readline().strip()
    except (OSError, UnicodeDecodeError):
        return ""


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _process_start(pid: int) -> str:
    """Start time of pid in clock ticks since boot (field 22 of /proc/PID/stat), or ""."""
    stat = _read_first_line(f"/proc/{pid}/stat")
    # The command name (field 2) may contain spaces and parentheses: split after the last ")".
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else ""


def _real_boot_id() -> str:
    return _read_first_line("/proc/sys/kernel/random/boot_id")


def _clock_domain() -> str:
    """Where CLOCK_BOOTTIME values are comparable: one boot and one time namespace
    (containers may offset their clocks); "" when unknown (then nothing is shared)."""
    boot = _real_boot_id()
    try:
        return f"{boot} {os.readlink('/proc/self/ns/time')}" if boot else ""
    except OSError:
        return boot  # kernels before time namespaces: one clock per boot


def _test_override() -> dict[str, str] | None:
    raw = os.environ.get(TEST_IDENTITY_ENV)
    if not raw:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = {}
    return {k: str(v) for k, v in doc.items()} if isinstance(doc, dict) else {}


def _wall_clock() -> float:
    """The wall-clock time written into lock files: shown to people, never used to
    judge a lease (another machine's clock may be off; see _clock)."""
    override = _test_override()
    if override is None:
        return time.time()
    try:
        return time.time() + float(override.get("clock_offset", 0))
    except ValueError:
        return time.time()


def holder_identity() -> dict[str, Any]:
    """What lets a later process prove this one dead: machine, boot, pid namespace, pid
    and its start time. The host name is only shown, never trusted."""
    identity: dict[str, Any] = {
        "host": socket.gethostname(),
        "machine_id": _read_first_line("/etc/machine-id")
        or _read_first_line("/var/lib/dbus/machine-id"),
        "boot_id": _real_boot_id(),
        "pid_ns": _pid_namespace(),
        "pid": os.getpid(),
        "pid_start": _process_start(os.getpid()),
    }
    override = _test_override()
    if override is not None:
        identity.update(
            {k: override[k] for k in ("host", "machine_id", "boot_id") if k in override}
        )
        identity["test_identity"] = True
    return identity


def holder_provably_dead(identity: dict[str, Any]) -> bool:
    """True only when the holder cannot be alive; False whenever in doubt.

    Provable only inside the kernel boot that ran it: same boot id (random per boot, so
    two machines never share one, whatever their host names), same machine id, same pid
    namespace. Another boot id is NOT "this host rebooted": two machines may carry one
    name (or one cloned machine id) on one shared folder."""
    if identity.get("test_identity"):
        return False
    me = holder_identity()
    if me.get("test_identity"):
        return False
    if not me["boot_id"] or identity.get("boot_id") != me["boot_id"]:
        return False
    if identity.get("machine_id", me["machine_id"]) != me["machine_id"]:
        return False  # older lock files have no machine_id: the boot id decides
    if not me["pid_ns"] or identity.get("pid_ns") != me["pid_ns"]:
        return False  # another container on this host: its pids are not ours to check
    pid = identity.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if not pid_alive(pid):
        return True
    start = identity.get("pid_start")
    return bool(start) and _process_start(pid) not in ("", start)


def local_holder_gone(identity: dict[str, Any]) -> bool:
    """Like holder_provably_dead, for lock files in this machine's own state dir (the
    job lock), which no other machine shares: a holder from an earlier boot of this
    machine is gone too. Never for repository locks: a shared folder can be reached
    by a twin of this machine (same name, cloned machine id) in another boot."""
    if holder_provably_dead(identity):
        return True
    me = holder_identity()
    if identity.get("test_identity") or me.get("test_identity"):
        return False
    if not me["boot_id"] or not identity.get("boot_id") or identity["boot_id"] == me["boot_id"]:
        return False
    if "machine_id" in identity:
        return bool(me["machine_id"]) and identity["machine_id"] == me["machine_id"]
    return bool(identity.get("host") == me["host"])  # job locks written before machine_id


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- reading and judging lock files -----------------------------------------------------
