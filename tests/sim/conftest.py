"""Fixtures for simulator contract tests: a real simulator and a real HTTPS client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hcbak.sim import Simulator

from .helpers import Api


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Simulator]:
    with Simulator(tmp_path / "sim", nodes=3, task_delay=0.01) as s:
        yield s


@pytest.fixture
def api(sim: Simulator) -> Api:
    return Api(sim)
