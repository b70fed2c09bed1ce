"""Enter a slow context manager in a helper thread while this thread does other work."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TypeVar

T = TypeVar("T")


@contextmanager
def entered_in_background(
    cm: AbstractContextManager[T], name: str = "hcbak-open"
) -> Iterator[Callable[[], T]]:
    """Start entering `cm` now; the body gets a function that waits for its value.

    Opening an encrypted repository costs a scrypt (~0.15 s) that a backup can spend
    logging in to the cluster instead. However the body ends, `cm` is exited here,
    with the body's exception, once its entering has finished (and only if it
    succeeded), so a lock it took is always released.
    """
    box: dict[str, object] = {}
    done = threading.Event()

    def enter() -> None:
        try:
            box["value"] = cm.__enter__()
        except BaseException as exc:  # handed to whoever waits for the value
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=enter, name=name, daemon=True).start()

    def value() -> T:
        done.wait()
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box["value"]  # type: ignore[return-value]

    try:
        yield value
    except BaseException:
        done.wait()
        if "value" in box and cm.__exit__(*sys.exc_info()):
            return
        raise
    done.wait()
    if "value" in box:
        cm.__exit__(None, None, None)
