"""Task waits: tag shapes, terminal states, rendered errors, a bounded wait.

The fetch function stands in for `GET /TaskTag/{tag}` (pure waiting logic; the real
endpoint is exercised in test_client_sim.py). A fake clock keeps the timeout test fast.
"""

from __future__ import annotations

from typing import Any

import pytest

from hcbak.errors import TaskFailedError
from hcbak.hypercore.tasks import MAX_POLL, normalize_tag, poll_until, wait_for_task


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds


def scripted(states: list[str], **extra: Any) -> tuple[list[str], Any]:
    seen: list[str] = []

    def fetch(tag: str) -> list[dict[str, Any]]:
        seen.append(tag)
        state = states.pop(0) if len(states) > 1 else states[0]
        return [{"taskTag": tag, "state": state, **extra}]

    return seen, fetch


def test_int_tag_is_polled_as_string_until_complete() -> None:
    clock = Clock()
    seen, fetch = scripted(["QUEUED", "RUNNING", "COMPLETE"])
    task = wait_for_task(fetch, 42, 10, sleep=clock.sleep, clock=clock)
    assert task is not None and task.state == "COMPLETE"
    assert seen == ["42", "42", "42"]


@pytest.mark.parametrize("tag", ["", None, "  "])
def test_empty_tag_means_nothing_to_wait_for(tag: Any) -> None:
    def fetch(tag: str) -> list[dict[str, Any]]:
        raise AssertionError("must not poll")

    assert wait_for_task(fetch, tag, 1) is None


def test_missing_task_record_counts_as_finished() -> None:
    assert wait_for_task(lambda t: [], "7", 1) is None


@pytest.mark.parametrize("state", ["ERROR", "UNINITIALIZED"])
def test_failed_task_raises_with_rendered_message(state: str) -> None:
    _, fetch = scripted(
        ["RUNNING", state], formattedMessage="VM %@ out of %@", messageParameters=["web01", "space"]
    )
    clock = Clock()
    with pytest.raises(TaskFailedError) as info:
        wait_for_task(fetch, "t1", 10, what="snapshot", sleep=clock.sleep, clock=clock)
    assert "VM web01 out of space" in str(info.value)
    assert state in str(info.value) and "snapshot" in str(info.value)


def test_wait_is_bounded_by_the_task_timeout() -> None:
    clock = Clock()
    _, fetch = scripted(["RUNNING"])
    with pytest.raises(TaskFailedError, match="did not finish within 30 s"):
        wait_for_task(fetch, "t", 30, sleep=clock.sleep, clock=clock)
    assert 30 <= clock.now <= 32.5


def test_normalize_tag_accepts_ints_and_strings() -> None:
    assert normalize_tag(5) == "5" and normalize_tag(" a ") == "a" and normalize_tag(None) == ""


def test_poll_until_returns_the_first_answer_and_backs_off_up_to_max_poll() -> None:
    clock = Clock()
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock.sleep(seconds)

    found = poll_until(
        lambda: "ready" if clock.now >= 20.0 else None, 60.0, sleep=sleep, clock=clock
    )
    assert found == "ready"
    assert sleeps == sorted(sleeps) and max(sleeps) == MAX_POLL  # grows, then capped


def test_poll_until_gives_none_at_the_deadline_without_sleeping_past_it() -> None:
    clock = Clock()
    calls: list[float] = []

    def probe() -> str | None:
        calls.append(clock.now)
        return None

    assert poll_until(probe, 3.0, first=0.1, sleep=clock.sleep, clock=clock) is None
    assert clock.now == pytest.approx(3.0)  # the last look is at the deadline, not after
    assert calls[0] == 0.0 and calls[-1] == pytest.approx(3.0)
