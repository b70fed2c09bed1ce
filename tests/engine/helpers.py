"""A simulated cluster, a repository and a config wired together for engine tests."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hcbak.cli.sim import sim_cluster_config
from hcbak.config import (
    Config,
    JobConfig,
    RepoConfig,
    save_config,
)
from hcbak.repo import ZERO_BLOCK, init_repo, open_repo
from hcbak.sim import Simulator

MiB = 1 << 20
BLOCK = 256 << 10  # small blocks so a few-MiB disk has many blocks


@dataclass
class Lab:
    tmp: Path
    sim: Simulator
    config: Config
    env: dict[str, str]

    @property
    def repo_path(self) -> Path:
        return Path(self.config.repositories["main"].path)

    def save(self) -> None:
        save_config(self.config)

    def points(self, vm: str | None = None) -> list[Any]:
        with open_repo(self.repo_path, lock=None) as repo:
            return repo.list_points(vm=vm)

    def point_content(self, point_id: str, disk_uuid: str) -> bytes:
        """The disk's bytes as the point records them (blocks read back from the repo)."""
        with open_repo(self.repo_path, lock=None) as repo:
            point = repo.load_point(point_id)
            image = next(d for d in point.disks if d.uuid == disk_uuid)
            parts = []
            for i in range(len(image.block_map)):
                bid = image.block_map.get(i)
                parts.append(bytes(image.block_size) if bid == ZERO_BLOCK else repo.get_block(bid))
            return b"".join(parts)[: image.capacity]

    def snapshot_content(self, snapshot_uuid: str, disk_uuid: str, capacity: int) -> bytes:
        return self.sim.read_snapshot(snapshot_uuid, disk_uuid, 0, capacity)

    def hcbak_snapshots(self, vm_uuid: str, job: str = "nightly") -> list[dict[str, Any]]:
        return [
            s for s in self.sim.snapshots(vm_uuid) if str(s["label"]).startswith(f"hcbak:{job}:")
        ]

    def worker_clones(self) -> list[dict[str, Any]]:
        """Snapshot clones hot-added to the worker VM."""
        return [
            d
            for d in self.sim.block_devices()
            if d["vm"] == self.sim.worker_vm_uuid and d.get("sourceSnapshotUUID")
        ]


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


@contextmanager
def lab(tmp: Path, *, retries: int = 0, nodes: int = 2, **job_fields: Any) -> Iterator[Lab]:
    """A running simulator + config + empty repository; job `nightly` selects tag `nightly`."""
    with Simulator(tmp / "sim", nodes=nodes, task_delay=0.005) as sim:
        password = sim.backup_user[1]
        env_var = "HCBAK_TEST_CLUSTER_PW"
        os.environ[env_var] = password
        cluster = sim_cluster_config(
            sim,
            "lab",
            password_env=env_var,
            connect_timeout=2.0,
            read_timeout=5.0,
            task_timeout=30.0,
            update_wait=2.0,
            retries=2,
        )
        repo_path = tmp / "repo"
        init_repo(repo_path, block_size=BLOCK)
        job = JobConfig(
            name="nightly",
            cluster="lab",
            repo="main",
            tags=["nightly"],
            retries=retries,
            retry_wait=0.1,
            **job_fields,
        )
        config = Config(
            path=tmp / "config.yaml",
            clusters={"lab": cluster},
            repositories={"main": RepoConfig(name="main", path=str(repo_path), block_size=BLOCK)},
            jobs={"nightly": job},
            state_dir=str(tmp / "state"),
        )
        save_config(config)
        env = {
            env_var: password,
            "HCBAK_CONFIG": str(config.path),
            "HCBAK_STATE_DIR": str(tmp / "state"),
        }
        yield Lab(tmp, sim, config, env)


def report_vm(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(v for j in report["jobs"] for v in j["vms"] if v["vm"] == name)


def parse_report(stdout: str) -> dict[str, Any]:
    return json.loads(stdout)
