"""`hcbak demo`: a guided end-to-end run against the built-in HyperCore simulator.

Everything runs for real: an HTTPS simulator with three nodes in this process, the
real commands through `hcbak.cli.main.run([...])` with a config in a temp folder, an
encrypted repository, a full and an incremental backup, and a restore compared byte by
byte with the snapshot. Only the cluster is simulated.

The root app loads this module only for `hcbak demo` (and --help); its heavier stdlib
imports (random, shutil, tempfile) are made where they are used all the same.
"""

import contextlib
import importlib.util
import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from hcbak.errors import HcbakError

if TYPE_CHECKING:
    from hcbak.sim import Simulator

BLOCK = 256 << 10
DEMO_ENV = ("HCBAK_CONFIG", "HCBAK_STATE_DIR", "HCBAK_DEMO_PASSWORD", "HCBAK_DEMO_PASSPHRASE")


app = typer.Typer(add_completion=False)  # one command, built by the root app on use


@app.command()
def demo(
    keep: Annotated[
        bool, typer.Option("--keep", help="Keep the temp folder (config, repo, logs).")
    ] = False,
) -> None:
    """Run the main job end to end against the built-in HyperCore simulator."""
    run_demo(keep=keep)


def say(text: str = "") -> None:
    typer.echo(text)


def step(n: int, title: str) -> None:
    say()
    say(typer.style(f"{n}. {title}", bold=True))


def hcbak(*args: str, capture: bool = False, ok: tuple[int, ...] = (0, 1)) -> str:
    """Run an hcbak command in-process, echoing it like a tutorial would."""
    from hcbak.cli.main import run

    shown = " ".join(a if " " not in a else repr(a) for a in args)
    say(typer.style(f"   $ hcbak {shown}", fg="cyan"))
    out = io.StringIO()
    with contextlib.redirect_stdout(out) if capture else contextlib.nullcontext():
        code = run(list(args))
    if code not in ok:
        raise HcbakError(f"demo step `hcbak {args[0]} {args[1]}` exited with {code}")
    return out.getvalue()


@contextlib.contextmanager
def demo_environment(folder: Path, password: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in DEMO_ENV}
    os.environ["HCBAK_CONFIG"] = str(folder / "config.yaml")
    os.environ["HCBAK_STATE_DIR"] = str(folder / "state")
    os.environ["HCBAK_DEMO_PASSWORD"] = password
    os.environ["HCBAK_DEMO_PASSPHRASE"] = "demo passphrase, use a real secret in production"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_demo(*, keep: bool = False) -> None:
    import shutil
    import tempfile

    from hcbak.sim import Simulator
    from hcbak.sim.seed import seed_demo

    started = time.monotonic()
    folder = Path(tempfile.mkdtemp(prefix="hcbak-demo-"))
    say("hcbak demo: back up VMs of a (simulated) SC//HyperCore cluster, then restore one.")
    say(f"Working folder: {folder}")
    try:
        step(1, "Start a simulated 3-node HyperCore cluster (real HTTPS on 127.0.0.1)")
        with Simulator(folder / "sim", nodes=3, task_delay=0.005) as sim:
            vms = seed_demo(sim)
            say(f"   VMs: {', '.join(sorted(vms))}; web01 and web02 hold the same data")
            user, password = sim.backup_user
            with demo_environment(folder, password):
                _tour(sim, folder, user)
    finally:
        if keep:
            say(f"\nKept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    say(f"\nDemo finished in {time.monotonic() - started:.1f} s.")


def _tour(sim: "Simulator", folder: Path, user: str) -> None:
    import random

    step(2, "Register the cluster: every node, pinned TLS fingerprints, a backup user")
    pins = [
        f"--fingerprint={a}={f}" for a, f in zip(sim.node_addresses, sim.fingerprints, strict=True)
    ]
    nodes = [f"--node={a}" for a in sim.node_addresses]
    hcbak("cluster", "add", "demo", *nodes, "--username", user,
          "--password-env", "HCBAK_DEMO_PASSWORD", "--worker-vm", "hcbak-worker",
          "--device-root", str(sim.device_root), *pins)  # fmt: skip
    say("   The password stays in an environment variable; the config holds its name only.")

    step(3, "Create an encrypted repository (AES-256-GCM, passphrase from an env var)")
    hcbak("repo", "add", "demo", "--path", str(folder / "repo"), "--encrypt",
          "--passphrase-env", "HCBAK_DEMO_PASSPHRASE", "--block-size", "256KiB")  # fmt: skip

    step(4, "Create a job: every VM tagged backup-nightly, keep the last 7 points")
    hcbak("job", "create", "nightly", "--cluster", "demo", "--repo", "demo",
          "--tag", "backup-nightly", "--keep-last", "7")  # fmt: skip

    step(5, "First run: snapshot each VM, read every disk (holes skipped), deduplicate")
    first = _run_job()
    _explain(first)

    step(6, "The guest writes to about 1% of web01's first disk")
    web = sim.disk_uuids("web01")[0]
    capacity = int(
        next(d for d in sim.vm_record("web01")["blockDevs"] if d["uuid"] == web)["capacity"]
    )
    n_blocks = capacity // BLOCK
    rng = random.Random(7)
    changed = sorted(rng.sample(range(n_blocks), max(1, n_blocks // 100)))
    for block in changed:
        sim.write(web, block * BLOCK + 4096, rng.randbytes(4096))
    say(f"   wrote 4 KiB into block(s) {', '.join(map(str, changed))} of {n_blocks}")

    step(7, "Second run: snapDiff tells hcbak which blocks changed; only those are read")
    second = _run_job()
    _explain(second)
    disk = _disk(second, "web01", web)
    say(f"   web01 disk 0: read {disk['blocks_read']} of {disk['blocks_total']} blocks "
        f"(changed: {len(changed)}), CBT: {disk['cbt_reason']}")  # fmt: skip
    if disk["blocks_read"] != len(changed):
        raise HcbakError("the incremental run did not read exactly the changed blocks")

    step(8, "Restore points: every point is a full image (no chains to merge)")
    hcbak("points", "list")

    step(9, "Restore web01's first disk from the newest point and compare it")
    _restore_check(sim, folder, second, web, capacity)


def _run_job() -> dict[str, Any]:
    out = hcbak("job", "run", "nightly", "--json", capture=True)
    return dict(json.loads(out))


def _explain(report: dict[str, Any]) -> None:
    job = report["jobs"][0]
    for vm in job["vms"]:
        t = vm["totals"]
        say(f"   {vm['vm']:<8} {vm['status']:<7} read {t['bytes_read'] >> 10:>6} KiB, "
            f"new {t['bytes_new'] >> 10:>6} KiB, stored {t['bytes_stored'] >> 10:>6} KiB "
            f"{'; '.join(vm['warnings'])}")  # fmt: skip
    t = job["totals"]
    say(f"   total: read {t['bytes_read'] >> 20} MiB, stored {t['bytes_stored'] >> 10} KiB "
        f"(dedup + lz4); exit code {report['exit_code']} ({report['status']})")  # fmt: skip


def _disk(report: dict[str, Any], vm_name: str, disk_uuid: str) -> dict[str, Any]:
    vm = next(v for v in report["jobs"][0]["vms"] if v["vm"] == vm_name)
    return dict(next(d for d in vm["disks"] if d["uuid"] == disk_uuid))


def _restore_check(
    sim: Any, folder: Path, report: dict[str, Any], disk_uuid: str, capacity: int
) -> None:
    if importlib.util.find_spec("hcbak.engine.restore_disk") is None:
        say("   (restore is not part of this build yet; skipped)")
        return
    vm = next(v for v in report["jobs"][0]["vms"] if v["vm"] == "web01")
    target = folder / "web01-disk0.raw"
    hcbak("restore", "disk", "web01@latest", "--disk", "0", "--to", str(target), "--repo", "demo")
    expected = sim.read_snapshot(vm["snapshot_uuid"], disk_uuid, 0, capacity)
    if target.read_bytes() != expected:
        raise HcbakError("restored disk differs from the snapshot")
    say(f"   {target.name}: {capacity >> 20} MiB, identical to the snapshot it was taken from")
