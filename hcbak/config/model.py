"""The config's records: plain dataclasses, as the YAML names them (docs/config.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

from hcbak.config.validation import DEFAULT_BLOCK_SIZE, did_you_mean
from hcbak.errors import NotFoundError, UsageError
from hcbak.schedule import parse_duration
from hcbak.secrets import SecretRef

# YAML `timeouts:` keys -> ClusterConfig attributes (the parser reads them, save writes them).
TIMEOUT_FIELDS = {
    "connect": "connect_timeout",
    "read": "read_timeout",
    "task": "task_timeout",
    "update_wait": "update_wait",
}


@dataclass
class TLSConfig:
    """How a cluster's certificate is trusted: pinned fingerprints, a CA file, or not."""

    ca_file: str | None = None
    fingerprints: dict[str, str] = field(default_factory=dict)
    insecure: bool = False


@dataclass
class ClusterConfig:
    """A cluster entry: how to reach and trust its nodes, and the worker VM hcbak runs on."""

    name: str
    nodes: list[str]
    username: str
    password: SecretRef
    tls: TLSConfig = field(default_factory=TLSConfig)
    worker_vm: str | None = None
    device_root: str = "/dev"
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    task_timeout: float = 900.0
    update_wait: float = 1800.0
    retries: int = 3


@dataclass
class RepoConfig:
    """A repository entry; the format settings themselves live in the repository.

    It pins what hcbak expects of the repository: encrypted exactly when it has a
    passphrase reference, and (entries written by `repo add` since format v2) the
    repository's id. A repository that differs is refused, exit 6: a `config` replaced
    by whoever can write the folder must never make hcbak back up in clear.
    """

    name: str
    path: str
    compression: str = "lz4"
    block_size: int = DEFAULT_BLOCK_SIZE
    passphrase: SecretRef | None = None
    repo_id: str | None = None
    s3: S3RepoConfig | None = None  # an S3 repository (then `path` is its s3:// location)
    # A folder whose committed objects this host must never delete or rewrite (forget,
    # prune and repair run on a trusted host; docs/operations.md, "Append-only folders").
    append_only: bool = False

    @property
    def encrypted(self) -> bool:
        return self.passphrase is not None


@dataclass
class S3RepoConfig:
    """Where an S3 repository lives and how to reach it. Credentials are a reference
    (env/file/command) or, when absent, boto3's own chain (AWS_* environment, `profile`
    or AWS_PROFILE, ~/.aws files, instance roles): never a key in this file."""

    bucket: str
    prefix: str = ""
    endpoint: str | None = None
    region: str | None = None
    profile: str | None = None
    credentials: SecretRef | None = None
    upload_parallel: int = 4
    immutable_days: int = 0  # Object Lock retention of every point (0: none)
    immutable_mode: str = "compliance"  # compliance | governance

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


@dataclass
class Retention:
    """keep_* rules of a job; a point is kept when any rule keeps it.

    The one retention record: the config parses it, `job create/edit` set it, and
    hcbak.repo.retention.select applies it (docs/format.md, Retention).
    """

    keep_last: int | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None
    keep_yearly: int | None = None
    keep_within: str | None = None

    def is_empty(self) -> bool:
        return all(getattr(self, name) is None for name in RETENTION_KEYS)

    def within(self) -> timedelta | None:
        """keep_within as a duration (the config's syntax: 36h, 7d, 2w, 1y = 365 days,
        1d12h); ValueError when it is not one (the loader and the CLI check it first)."""
        if not self.keep_within:
            return None
        try:
            return parse_duration(self.keep_within)
        except ValueError as exc:
            raise ValueError(f"keep_within: {exc}") from None


RETENTION_KEYS = (
    "keep_last",
    "keep_daily",
    "keep_weekly",
    "keep_monthly",
    "keep_yearly",
    "keep_within",
)


@dataclass
class EmailNotify:
    """Who gets a job's report, and for which outcomes."""

    to: list[str]
    on: list[str] = field(default_factory=lambda: ["failure", "warning"])


@dataclass
class JobConfig:
    """What one job backs up, where to, and how it runs (as written in the YAML)."""

    name: str
    cluster: str
    repo: str
    vms: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    disks: list[str] = field(default_factory=list)
    retention: Retention = field(default_factory=Retention)
    schedule: str | None = None
    parallel: int = 4
    retries: int = 1
    retry_wait: float = 60.0
    notify: EmailNotify | None = None
    pre_hook: str | None = None
    post_hook: str | None = None
    alert_after: str | None = None
    prune: str | None = None
    # Ask HyperCore (9.7.1+) for an application-consistent snapshot; crash-consistent
    # with a warning where the cluster or the VM's guest agent cannot (docs/hypercore.md).
    quiesce: bool = False
    # Repositories the job's new points are copied to after its backups (engine/copy_to.py).
    copy_to: list[str] = field(default_factory=list)


@dataclass
class SMTPConfig:
    """The one mail server every job's notification goes through."""

    host: str
    sender: str
    port: int = 25
    security: str = "starttls"
    username: str | None = None
    password: SecretRef | None = None


@dataclass
class Config:
    """The whole config file, parsed and checked; `save_config` writes it back."""

    path: Path
    clusters: dict[str, ClusterConfig] = field(default_factory=dict)
    repositories: dict[str, RepoConfig] = field(default_factory=dict)
    jobs: dict[str, JobConfig] = field(default_factory=dict)
    smtp: SMTPConfig | None = None
    state_dir: str | None = None

    def cluster(self, name: str) -> ClusterConfig:
        return _lookup(self.clusters, name, "cluster", "hcbak cluster list")

    def repo(self, name: str) -> RepoConfig:
        return _lookup(self.repositories, name, "repository", "hcbak repo list")

    def job(self, name: str) -> JobConfig:
        return _lookup(self.jobs, name, "job", "hcbak job list")

    def has_inline_secret(self) -> bool:
        refs: list[SecretRef | None] = [c.password for c in self.clusters.values()]
        refs += [r.passphrase for r in self.repositories.values()]
        refs.append(self.smtp.password if self.smtp else None)
        return any(ref is not None and ref.is_inline() for ref in refs)


T = TypeVar("T")


def _lookup(table: dict[str, T], name: str, kind: str, list_cmd: str) -> T:
    try:
        return table[name]
    except KeyError:
        hint = did_you_mean(name, table) or f"see `{list_cmd}`"
        raise NotFoundError(f"no {kind} named {name!r}", hint=hint) from None


def jobs_using(config: Config, cluster: str | None = None, repo: str | None = None) -> list[str]:
    """Names of jobs that use `cluster` and/or `repo` (sorted): removal must refuse them."""
    return sorted(
        job.name
        for job in config.jobs.values()
        if (cluster is not None and job.cluster == cluster)
        or (repo is not None and (job.repo == repo or repo in job.copy_to))
    )


def ensure_unused(config: Config, *, cluster: str | None = None, repo: str | None = None) -> None:
    """Refuse to remove a cluster or repository that a job still names."""
    users = jobs_using(config, cluster=cluster, repo=repo)
    if users:
        what = f"cluster {cluster!r}" if cluster is not None else f"repository {repo!r}"
        raise UsageError(
            f"{what} is used by job(s) {', '.join(users)}",
            hint="remove or edit those jobs first",
        )
