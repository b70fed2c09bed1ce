"""Enter a slow context manager in a helper thread while this thread does other work."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from hcbak.config import Config, JobConfig

T = TypeVar("T")


@contextmanager
def entered_in_background(
    make: Callable[[], AbstractContextManager[T]], name: str = "hcbak-open"
) -> Iterator[Callable[[], T]]:
    """Build (`make()`) and enter a context in a helper thread; the body gets a function
    that waits for its value.

    Opening an encrypted repository costs its imports and a scrypt (~0.2 s together)
    that a backup can spend logging in to the cluster instead. However the body ends,
    the context is exited here, with the body's exception, once its entering has
    finished (and only if it succeeded), so a lock it took is always released.
    """
    box: dict[str, object] = {}
    done = threading.Event()
    held: list[AbstractContextManager[T]] = []

    def enter() -> None:
        try:
            cm = make()
            box["value"] = cm.__enter__()
            held.append(cm)
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
        if held and held[0].__exit__(*sys.exc_info()):
            return
        raise
    done.wait()
    if held:
        held[0].__exit__(None, None, None)


def derive_repository_key_early(config: Config, job: JobConfig) -> None:
    """Start the scrypt of `job`'s repository now, before the engine is even imported.

    Skipped when a pre-hook must run first (it may mount the repository) and for
    passphrase commands (they would run twice). Any problem is left for the real open
    to report.
    """
    from hcbak.errors import HcbakError

    try:
        repo_cfg = config.repo(job.repo)
        ref = repo_cfg.passphrase
        if job.pre_hook or ref is None or ref.command or repo_cfg.s3 is not None:
            return  # an S3 repository's config is read when it opens (boto3 is slow to import)
        from hcbak.repo.settings import derive_early

        derive_early(Path(repo_cfg.path), ref.resolve())
    except HcbakError:
        return
