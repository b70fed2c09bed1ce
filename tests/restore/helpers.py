"""Building restore points for restore tests straight through the repository API.

A point made here is what a backup would store for a disk read from a file: the same
block ids, the same zero-block rule. It keeps restore tests independent of the backup
engine; the end-to-end tests against the simulator use the real backup path.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hcbak.cli.sim import sim_cluster_config
from hcbak.config import Config, JobConfig, RepoConfig, save_config
from hcbak.engine.backup import run_job
from hcbak.repo import BlockMap, DiskImage, Point, Repository, init_repo, open_repo
from hcbak.sim import Simulator

MiB = 1 << 20


@dataclass
class SourceDisk:
    path: Path
    uuid: str
    slot: int
    type: str = "VIRTIO_DISK"


def write_source(path: Path, capacity: int, seed: int, every: int = 4) -> Path:
    """A sparse raw file: 64 KiB of distinct data in every `every`-th 1 MiB stripe,
    plus data in the last bytes so the tail (not block aligned) matters."""
    with open(path, "wb") as f:
        f.truncate(capacity)
        for n, offset in enumerate(range(0, capacity, MiB)):
            if n % every == 0:
                digest = hashlib.sha256(f"{seed}-{n}".encode()).digest()
                f.seek(offset + 4096)
                f.write((digest * 2048)[: min(65536, capacity - offset - 4096)])
        f.seek(capacity - 100)
        f.write(b"tail-" * 20)
    return path


def store_disk(repo: Repository, source: SourceDisk) -> DiskImage:
    block_size = repo.config.block_size
    capacity = os.path.getsize(source.path)
    n_blocks = -(-capacity // block_size)
    block_map = BlockMap(n_blocks)
    with open(source.path, "rb") as f:
        for i in range(n_blocks):
            data = f.read(block_size).ljust(block_size, b"\0")
            if data.count(0) == len(data):
                continue  # zero blocks are never stored
            block_id = repo.block_id(data)
            repo.put_block(block_id, data)
            block_map.set(i, block_id)
    return DiskImage(
        uuid=source.uuid,
        slot=source.slot,
        type=source.type,
        capacity=capacity,
        block_size=block_size,
        block_map=block_map,
    )


def make_point(
    repo: Repository,
    disks: list[SourceDisk],
    vm_name: str = "web01",
    vm: dict[str, Any] | None = None,
    created: datetime | None = None,
) -> Point:
    point = Point(
        id=repo.new_point_id(),
        job="test",
        cluster="lab",
        vm_uuid="vm-" + vm_name,
        vm_name=vm_name,
        created=created or datetime.now(UTC),
        vm=vm or {"name": vm_name},
        snapshot_uuid=None,
        snapshot_label=None,
        disks=[store_disk(repo, d) for d in disks],
        stats={},
        hcbak_version="test",
    )
    repo.save_point(point)
    return point


# --- a simulated cluster + repository + config, for whole-VM restores --------------------


@dataclass
class RestoreLab:
    tmp: Path
    sim: Simulator
    config: Config
    env: dict[str, str]

    @property
    def repo_path(self) -> Path:
        return Path(self.config.repositories["main"].path)

    def back_up(self, *, full: bool = False) -> Point:
        """Run the real backup job (engine) and return the newest point."""
        report = run_job(self.config, self.config.job("nightly"), full=full)
        assert report.status != "failed" and report.vms, report
        assert all(vm.status == "ok" for vm in report.vms), report
        with open_repo(self.repo_path, lock=None) as repo:
            newest = repo.list_points()[-1]
            return repo.load_point(newest.id)


@contextmanager
def restore_lab(tmp: Path, env_var: str = "HCBAK_RESTORE_TEST_PW") -> Iterator[RestoreLab]:
    """A running simulator, a repository (256 KiB blocks) and a config saved to disk.

    The cluster password travels by environment variable (as in production configs);
    the caller's `env` carries it to subprocesses, os.environ to in-process calls.
    """
    with Simulator(tmp / "sim", nodes=2, task_delay=0.005) as sim:
        password = sim.backup_user[1]
        os.environ[env_var] = password
        cluster = sim_cluster_config(
            sim,
            "lab",
            password_env=env_var,
            connect_timeout=2.0,
            read_timeout=10.0,
            task_timeout=30.0,
            update_wait=2.0,
            retries=2,
        )
        repo_path = tmp / "repo"
        init_repo(repo_path, block_size=256 * 1024)
        config = Config(
            path=tmp / "config.yaml",
            clusters={"lab": cluster},
            repositories={"main": RepoConfig("main", str(repo_path), block_size=256 * 1024)},
            jobs={
                "nightly": JobConfig(name="nightly", cluster="lab", repo="main", tags=["nightly"])
            },
            state_dir=str(tmp / "state"),
        )
        save_config(config)
        env = {
            env_var: password,
            "HCBAK_CONFIG": str(config.path),
            "HCBAK_STATE_DIR": str(tmp / "state"),
        }
        try:
            yield RestoreLab(tmp, sim, config, env)
        finally:
            os.environ.pop(env_var, None)
