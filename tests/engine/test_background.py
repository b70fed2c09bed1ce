"""entered_in_background: the value arrives later, and the context is always exited."""

from __future__ import annotations

import threading
import time
from types import TracebackType

import pytest

from hcbak.engine.background import entered_in_background


class Recorder:
    """A context manager whose __enter__ is slow (like scrypt) and may fail."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.entered_in: str | None = None
        self.exits: list[type[BaseException] | None] = []

    def __enter__(self) -> str:
        time.sleep(0.05)
        self.entered_in = threading.current_thread().name
        if self.fail:
            raise OSError("locked")
        return "repo"

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.exits.append(kind)


def test_value_comes_from_the_helper_thread_and_exit_runs_once() -> None:
    cm = Recorder()
    with entered_in_background(lambda: cm, name="opener") as value:
        assert cm.exits == []
        assert value() == "repo"
    assert cm.entered_in == "opener"
    assert cm.exits == [None]


def test_body_failure_before_the_value_still_exits_with_the_error() -> None:
    """The cluster login fails while the repository is still opening: its lock must
    still be released, and the login's error is the one reported."""
    cm = Recorder()
    with pytest.raises(KeyError), entered_in_background(lambda: cm):
        raise KeyError("cluster")
    assert cm.exits == [KeyError]


def test_entering_failure_is_raised_by_value_and_nothing_is_exited() -> None:
    cm = Recorder(fail=True)
    with pytest.raises(OSError, match="locked"), entered_in_background(lambda: cm) as value:
        value()
    assert cm.exits == []


def test_the_context_is_built_in_the_helper_thread_too() -> None:
    """Building it imports the repository code: that too must not hold up the caller."""
    built_in: list[str] = []
    cm = Recorder()

    def make() -> Recorder:
        built_in.append(threading.current_thread().name)
        return cm

    with entered_in_background(make, name="opener") as value:
        assert value() == "repo"
    assert built_in == ["opener"]
    assert cm.exits == [None]


def test_a_failure_to_build_is_raised_by_value() -> None:
    def make() -> Recorder:
        raise ImportError("no repo code")

    with pytest.raises(ImportError), entered_in_background(make) as value:
        value()
