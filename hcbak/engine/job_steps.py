"""The steps around a job's backups: hooks, retention, prune after the run.

The pre-hook runs before anything else (its failure skips the job), the post-hook
after everything (its failure is a warning). Retention forgets the points the job's
policy no longer keeps once its VMs are done; `prune: after_run` then frees their
data when nobody else is using the repository.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from hcbak.engine.report import status_word, utcnow
from hcbak.errors import HookError, LockedError

if TYPE_CHECKING:
    from hcbak.engine.session import Session
    from hcbak.secrets import Secret

log = logging.getLogger("hcbak.engine")


def pre_hook(s: Session) -> None:
    """The job's pre-hook: a failure skips the job (HookError)."""
    if not s.job.pre_hook or s.report.dry_run:
        return
    try:
        from hcbak.engine.hooks import run_hook  # subprocess: jobs with hooks only

        output = run_hook(s.job.pre_hook, "pre", s.hook_values())
        log.info("pre-hook output: %s", output.strip())
    except HookError as exc:
        raise HookError(f"job skipped: {exc.message}")


def post_hook(s: Session) -> None:
    """The job's post-hook, told how the run ended; its failure is a warning."""
    if not s.job.post_hook or s.report.dry_run:
        return
    code = s.report.exit_code()
    totals = s.report.totals()
    values = {
        **s.hook_values(),
        "status": status_word(code),
        "exit_code": int(code),
        "vms_ok": totals["vms_ok"],
        "vms_failed": totals["vms_failed"],
        "points": " ".join(v.point_id for v in s.report.vms if v.point_id),
    }
    from hcbak.engine.hooks import run_hook

    try:
        output = run_hook(s.job.post_hook, "post", values)
        log.info("post-hook output: %s", output.strip())
    except HookError as exc:
        s.warn(exc.message)


def apply_retention(s: Session) -> None:
    """Forget the job's points its retention policy no longer keeps."""
    policy = s.job.retention
    if policy is None or policy.is_empty():
        return
    try:
        from hcbak.repo import retention
    except ImportError:
        s.warn("retention is not available in this build; no points forgotten")
        return
    now = utcnow()
    points = s.repo.list_points(job=s.job.name)
    forget = [p.id for p, keep, _reasons in retention.select(points, policy, now) if not keep]
    if forget:
        s.repo.forget_points(forget)
        s.report.forgotten = forget
        log.info("retention forgot %d point(s)", len(forget))


def prune_after_run(s: Session, passphrase: Secret | None) -> None:
    """`prune: after_run`: free the forgotten points' data, only if nobody else is
    using the repository right now (prune needs the exclusive lock)."""
    from hcbak.engine.repo_open import open_configured_repo
    from hcbak.repo.prune import prune

    try:
        with open_configured_repo(
            s.repo_cfg,
            passphrase=passphrase,
            lock="exclusive",
            command="job run prune",
            state_dir=s.state_dir,
        ) as repo:
            prune(repo)
        s.report.pruned = True
    except LockedError as exc:
        s.warn(f"prune skipped, repository in use: {exc.one_line()}")
