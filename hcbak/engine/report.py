"""The run report: what a backup run did, per job, VM and disk.

One model feeds every output: the live view and plain log lines (via progress events),
`--json` (docs/run-report.md is the schema; keys are a contract for scripts), the
email body, and the exit code (design.md: 0 ok, 1 warnings, 3 some VMs failed,
4 nothing backed up, 5 job already running).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from hcbak.errors import ExitCode

SCHEMA_VERSION = 2

VM_OK = "ok"
VM_FAILED = "failed"
VM_SKIPPED = "skipped"


def utcnow() -> datetime:
    return datetime.now(UTC)


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB' (tables, summaries, mail bodies)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def iso(dt: datetime | None) -> str | None:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z") if dt else None


@dataclass
class DiskReport:
    """One disk of one VM in a run: what was read and stored, and why CBT was or was not used."""

    uuid: str
    slot: int
    type: str
    capacity: int
    status: str = VM_OK  # ok | skipped | failed
    reason: str = ""  # why skipped/failed
    cbt_used: bool = False
    cbt_reason: str = ""  # "snapDiff" or the fallback reason
    blocks_total: int = 0
    blocks_read: int = 0  # blocks whose bytes were read from the device
    blocks_zero: int = 0  # all-zero blocks (holes or zero data), never stored
    blocks_changed: int = 0  # blocks whose id differs from the previous point
    blocks_new: int = 0  # blocks the repository did not have (stored)
    bytes_read: int = 0
    bytes_changed: int = 0
    bytes_new: int = 0  # plaintext bytes of newly stored blocks
    bytes_stored: int = 0  # bytes added to the repository (compressed, encrypted)
    duration: float = 0.0


@dataclass
class Timings:
    """Seconds spent per pipeline stage, summed over worker threads."""

    source_read: float = 0.0
    hashing: float = 0.0
    store: float = 0.0  # compression + encryption + pack write (Repository.put_block)

    def add(self, other: Timings) -> None:
        self.source_read += other.source_read
        self.hashing += other.hashing
        self.store += other.store

    def bottleneck(self) -> str:
        """The stage that took the most thread-seconds.

        Repository.put_block compresses, encrypts and appends to a pack in one call, so
        from outside it is one stage: "compression+repository write".
        """
        stages = {
            "source read": self.source_read,
            "hashing": self.hashing,
            "compression+repository write": self.store,
        }
        if not any(stages.values()):
            return "none"
        return max(stages, key=lambda k: stages[k])


@dataclass
class VmReport:
    """One VM in a run: its outcome, its point and its disks."""

    name: str
    uuid: str | None
    status: str = VM_OK
    reason: str = ""
    point_id: str | None = None
    snapshot_uuid: str | None = None
    source: str = "snapshot"  # snapshot | replica snapshot
    consistency: str | None = None  # application | crash (None: no snapshot taken)
    attempts: int = 0
    started: datetime | None = None
    duration: float = 0.0
    disks: list[DiskReport] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    timings: Timings = field(default_factory=Timings)

    def totals(self) -> dict[str, int]:
        return _sum_disks(self.disks)


@dataclass
class JobReport:
    """One job in a run: every VM's outcome, totals and the retention it applied."""

    job: str
    cluster: str
    repo: str
    started: datetime = field(default_factory=utcnow)
    finished: datetime | None = None
    dry_run: bool = False
    full: bool = False
    status: str = "success"
    reason: str = ""
    vms: list[VmReport] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)
    pruned: bool = False
    log_file: str | None = None
    # The code of the error that ended the job ("failed"): 2 for a config problem a
    # retry cannot fix, 6 for a damaged repository, else 4.
    error_code: ExitCode = ExitCode.FAILED
    # Copies of the new points to the job's `copy_to` repositories (engine/copy_to.py):
    # engine.copy.CopyReport objects, one per target.
    copies: list[Any] = field(default_factory=list)

    def exit_code(self) -> ExitCode:
        return job_exit_code(self)

    def totals(self) -> dict[str, int]:
        disks = [d for vm in self.vms for d in vm.disks]
        out = _sum_disks(disks)
        out["vms_ok"] = sum(vm.status == VM_OK for vm in self.vms)
        out["vms_warning"] = sum(vm_status_word(vm) == "warning" for vm in self.vms)  # of vms_ok
        out["vms_failed"] = sum(vm.status == VM_FAILED for vm in self.vms)
        out["vms_skipped"] = sum(vm.status == VM_SKIPPED for vm in self.vms)
        return out

    def timings(self) -> Timings:
        total = Timings()
        for vm in self.vms:
            total.add(vm.timings)
        return total


def _sum_disks(disks: list[DiskReport]) -> dict[str, int]:
    keys = (
        "blocks_total",
        "blocks_read",
        "blocks_zero",
        "blocks_changed",
        "blocks_new",
        "bytes_read",
        "bytes_changed",
        "bytes_new",
        "bytes_stored",
    )
    return {k: sum(getattr(d, k) for d in disks) for k in keys}


def job_exit_code(job: JobReport) -> ExitCode:
    """Map one job's outcome, its copies included, to the exit-code contract: a copy
    that fails after good backups makes the job partial (3)."""
    code = _backup_exit_code(job)
    if not job.copies:
        return code
    return combine_exit_codes([code, *(c.exit_code() for c in job.copies)])


def _backup_exit_code(job: JobReport) -> ExitCode:
    if job.status == "locked":
        return ExitCode.BUSY
    if job.status in ("failed", "interrupted"):
        return job.error_code
    ok = sum(vm.status == VM_OK for vm in job.vms)
    if job.dry_run:
        ok = sum(vm.status == VM_SKIPPED for vm in job.vms)
    failed = sum(vm.status == VM_FAILED for vm in job.vms)
    if failed and not ok:
        return ExitCode.FAILED
    if failed:
        return ExitCode.PARTIAL
    skipped = not job.dry_run and any(vm.status == VM_SKIPPED for vm in job.vms)
    if job.warnings or any(vm.warnings for vm in job.vms) or skipped:
        return ExitCode.WARNINGS
    return ExitCode.OK


def vm_status_word(vm: VmReport) -> str:
    """A VM's status in human tables and mail: `warning` when it was backed up with
    warnings (the JSON keeps `status` ok and lists the `warnings`)."""
    return "warning" if vm.status == VM_OK and vm.warnings else vm.status


# Human tables and mail list the VMs that need a look first (issue 21: with 200 VMs
# the failures must not hide in the middle of the successes).
_SEVERITY = {"failed": 0, "warning": 1, "skipped": 2, "ok": 3}


def vms_failures_first(vms: list[VmReport]) -> list[VmReport]:
    """Failed, then with warnings, then skipped, then ok; run order within each."""
    return sorted(vms, key=lambda vm: _SEVERITY.get(vm_status_word(vm), 0))


def job_duration(job: JobReport) -> float:
    return (job.finished - job.started).total_seconds() if job.finished else 0.0


def human_seconds(seconds: float) -> str:
    """12.3 s, 4 min 05 s, 2 h 03 min: a run's duration at a glance."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def summary_line(job: JobReport) -> str:
    """One line for the top of the summary and the mail: counts, bytes, duration."""
    t = job.totals()
    plain_ok = t["vms_ok"] - t["vms_warning"]
    counts = f"{plain_ok} ok, {t['vms_warning']} warning, {t['vms_failed']} failed"
    if t["vms_skipped"]:
        counts += f", {t['vms_skipped']} skipped"
    return (
        f"{len(job.vms)} VMs: {counts}; read {human_bytes(t['bytes_read'])}, "
        f"stored {human_bytes(t['bytes_stored'])}; {human_seconds(job_duration(job))}"
    )


def status_word(code: ExitCode) -> str:
    return {
        ExitCode.OK: "success",
        ExitCode.WARNINGS: "warning",
        ExitCode.PARTIAL: "partial",
        ExitCode.FAILED: "failed",
        ExitCode.BUSY: "locked",
        ExitCode.INTERRUPTED: "interrupted",
    }.get(code, "failed")


def combine_exit_codes(codes: list[ExitCode]) -> ExitCode:
    """Several jobs in one invocation: a mix of success and failure is partial (3)."""
    if not codes:
        return ExitCode.OK
    if ExitCode.INTERRUPTED in codes:  # the run stopped: the jobs after it never ran
        return ExitCode.INTERRUPTED
    if len(set(codes)) == 1:
        return codes[0]
    good = {ExitCode.OK, ExitCode.WARNINGS}
    if any(c in good for c in codes) and any(c not in good for c in codes):
        return ExitCode.PARTIAL
    if ExitCode.PARTIAL in codes:
        return ExitCode.PARTIAL
    return max(codes)


@dataclass
class RunReport:
    """Everything one `hcbak job run` invocation did (one or more jobs)."""

    jobs: list[JobReport] = field(default_factory=list)
    started: datetime = field(default_factory=utcnow)
    finished: datetime | None = None
    alerts: list[str] = field(default_factory=list)  # --due: jobs overdue per alert_after

    def exit_code(self) -> ExitCode:
        code = combine_exit_codes([j.exit_code() for j in self.jobs])
        return ExitCode.WARNINGS if self.alerts and code == ExitCode.OK else code

    def to_dict(self) -> dict[str, Any]:
        code = self.exit_code()
        return {
            "schema": SCHEMA_VERSION,
            "started": iso(self.started),
            "finished": iso(self.finished),
            "exit_code": int(code),
            "status": status_word(code),
            "alerts": list(self.alerts),
            "jobs": [job_to_dict(j) for j in self.jobs],
        }


def job_to_dict(job: JobReport) -> dict[str, Any]:
    code = job.exit_code()
    timings = job.timings()
    duration = job_duration(job)
    return {
        "job": job.job,
        "cluster": job.cluster,
        "repo": job.repo,
        "started": iso(job.started),
        "finished": iso(job.finished),
        "duration": round(duration, 3),
        "dry_run": job.dry_run,
        "full": job.full,
        "status": status_word(code),
        "exit_code": int(code),
        "reason": job.reason,
        "warnings": list(job.warnings),
        "totals": job.totals(),
        "bottleneck": {
            "stage": timings.bottleneck(),
            "source_read_seconds": round(timings.source_read, 3),
            "hashing_seconds": round(timings.hashing, 3),
            "store_seconds": round(timings.store, 3),
        },
        "retention": {"forgotten": list(job.forgotten), "pruned": job.pruned},
        "copies": [c.to_json() for c in job.copies],
        "log_file": job.log_file,
        "vms": [vm_to_dict(vm) for vm in job.vms],
    }


def vm_to_dict(vm: VmReport) -> dict[str, Any]:
    return {
        "vm": vm.name,
        "vm_uuid": vm.uuid,
        "status": vm.status,
        "reason": vm.reason,
        "point_id": vm.point_id,
        "snapshot_uuid": vm.snapshot_uuid,
        "source": vm.source,
        "consistency": vm.consistency,
        "attempts": vm.attempts,
        "started": iso(vm.started),
        "duration": round(vm.duration, 3),
        "warnings": list(vm.warnings),
        "totals": vm.totals(),
        "disks": [_disk_dict(d) for d in vm.disks],
    }


def _disk_dict(disk: DiskReport) -> dict[str, Any]:
    out = asdict(disk)
    out["duration"] = round(disk.duration, 3)
    return out
