"""The records of a copy (hcbak/engine/copy.py): which points to copy, what happened
to each, the report whose exit code follows `job run`'s rules, and progress events.
Pure data and logic, no I/O."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from hcbak.errors import ExitCode
from hcbak.repo.points import PointSummary

VERIFY_SAMPLE = 16  # blocks of each copied point read back from DST and decoded
COPIED, PRESENT, FAILED, PLANNED = "copied", "present", "failed", "planned"


@dataclass(frozen=True)
class CopySelection:
    """Which SRC points to copy; every filter given must match (empty: any).

    `point_ids` limits the copy to those points; with `catch_up` (a job's `copy_to`)
    a point is also chosen when DST holds an older point of the same job and VM, so a
    copy that failed last run is sent with the next, while points older than DST's
    newest (copied and forgotten there by DST's retention) are not sent again."""

    jobs: tuple[str, ...] = ()
    vms: tuple[str, ...] = ()  # VM name or uuid
    since: datetime | None = None  # created at or after
    point_ids: tuple[str, ...] = ()
    catch_up: bool = False

    def matches(self, s: PointSummary) -> bool:
        """The filters on the point alone (job, VM, since)."""
        if self.jobs and s.job not in self.jobs:
            return False
        if self.vms and s.vm_name not in self.vms and s.vm_uuid not in self.vms:
            return False
        return self.since is None or s.created >= self.since


def choose(
    summaries: list[PointSummary], selection: CopySelection, in_dst: list[PointSummary]
) -> list[PointSummary]:
    """The SRC points a copy considers, oldest first (pure: no I/O)."""
    newest: dict[tuple[str, str], datetime] = {}
    if selection.catch_up:
        for d in in_dst:
            key = (d.job, d.vm_uuid)
            newest[key] = max(newest.get(key, d.created), d.created)
    out = []
    for s in summaries:
        if not selection.matches(s):
            continue
        named = not selection.point_ids or s.id in selection.point_ids
        after = newest.get((s.job, s.vm_uuid))
        if named or (after is not None and s.created > after):
            out.append(s)
    return sorted(out, key=lambda s: (s.created, s.id))


@dataclass
class PointCopy:
    """One selected point: what the copy did with it."""

    id: str
    vm_name: str
    job: str
    created: datetime
    status: str = PLANNED  # planned | copied | present | failed
    reason: str = ""
    error_code: ExitCode = ExitCode.OK
    blocks: int = 0  # non-zero blocks the point references
    blocks_sent: int = 0  # blocks DST lacked, stored by this copy
    blocks_read: int = 0  # blocks read from SRC (sent, or read only to learn DST's id)
    bytes_sent: int = 0  # bytes added to DST (compressed, maybe encrypted)
    bytes_read: int = 0  # plaintext bytes read from SRC
    blocks_verified: int = 0  # blocks read back from DST before the commit
    duration: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "vm": self.vm_name,
            "job": self.job,
            "created": self.created.isoformat(),
            "status": self.status,
            "reason": self.reason,
            "blocks": self.blocks,
            "blocks_sent": self.blocks_sent,
            "blocks_read": self.blocks_read,
            "bytes_sent": self.bytes_sent,
            "bytes_read": self.bytes_read,
            "blocks_verified": self.blocks_verified,
            "duration": round(self.duration, 3),
        }


@dataclass
class CopyReport:
    """What one copy from SRC to DST did; its exit code follows `job run`'s rules."""

    src: str
    dst: str
    dry_run: bool = False
    same_ids: bool = False
    points: list[PointCopy] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    status: str = ""  # "" (by the points), or interrupted | locked | failed for all of it
    reason: str = ""
    error_code: ExitCode = ExitCode.OK

    def of(self, status: str) -> list[PointCopy]:
        return [p for p in self.points if p.status == status]

    def exit_code(self) -> ExitCode:
        if self.status == "interrupted":
            return ExitCode.INTERRUPTED
        if self.status:
            return self.error_code
        failed, copied = self.of(FAILED), self.of(COPIED)
        if failed and copied:
            return ExitCode.PARTIAL
        if failed:
            codes = {p.error_code for p in failed}
            return codes.pop() if len(codes) == 1 else ExitCode.FAILED
        return ExitCode.WARNINGS if self.warnings else ExitCode.OK

    def totals(self) -> dict[str, int]:
        keys = ("blocks", "blocks_sent", "blocks_read", "bytes_sent", "bytes_read")
        out = {k: sum(getattr(p, k) for p in self.points) for k in keys}
        for status in (COPIED, PRESENT, FAILED, PLANNED):
            out[f"points_{status}"] = len(self.of(status))
        return out

    def summary(self) -> str:
        """One line for logs, the job report and its email."""
        t = self.totals()
        text = (
            f"copy to {self.dst}: {t['points_copied']} point(s) copied, "
            f"{t['points_present']} already there, {t['points_failed']} failed, "
            f"{t['blocks_sent']} block(s) sent"
        )
        if self.status:
            text += f" ({self.status}: {self.reason})"
        return text

    def to_json(self) -> dict[str, Any]:
        code = self.exit_code()
        return {
            "src": self.src,
            "dst": self.dst,
            "dry_run": self.dry_run,
            "same_block_ids": self.same_ids,
            "exit_code": int(code),
            "status": self.status or _status_word(code),
            "reason": self.reason,
            "warnings": list(self.warnings),
            "verify": f"every block present, {VERIFY_SAMPLE} per point read back",
            "totals": self.totals(),
            "points": [p.to_json() for p in self.points],
        }


def _status_word(code: ExitCode) -> str:
    from hcbak.engine.report import status_word

    return status_word(code)


@dataclass(frozen=True)
class CopyEvent:
    """Progress of a copy: point_start/point_progress (bytes of the point's blocks
    handled so far of `total`), point_done, point_present, warning."""

    kind: str
    point: PointCopy | None = None
    done: int = 0
    total: int = 0
    message: str = ""


CopyProgress = Callable[[CopyEvent], None]


def no_progress(_event: CopyEvent) -> None:
    pass
