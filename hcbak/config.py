"""The YAML config: typed model, validating loader with line numbers, atomic save.

Plain dataclasses, not pydantic (docs/config.md says why): the loader walks PyYAML's
node tree so each error can name `file:line: field: what`, and the model stays a
leaf module importable from anywhere without a validation framework.

Commands that edit the config rewrite the whole file with a fixed layout; comments
are not preserved (documented), hand edits are welcome.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from hcbak.errors import ConfigError, HcbakError, NotFoundError, UsageError
from hcbak.schedule import CronSchedule, parse_duration
from hcbak.secrets import Secret, SecretRef

__all__ = [
    "COMPRESSIONS",
    "NAME_RE",
    "NOTIFY_EVENTS",
    "ClusterConfig",
    "Config",
    "EmailNotify",
    "JobConfig",
    "RepoConfig",
    "Retention",
    "SMTPConfig",
    "TLSConfig",
    "default_config_path",
    "format_block_size",
    "jobs_using",
    "load_config",
    "normalize_fingerprint",
    "parse_block_size",
    "save_config",
    "state_dir",
    "validate_name",
    "validate_node",
]

NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
COMPRESSIONS = ("lz4", "zstd", "none")
NOTIFY_EVENTS = ("failure", "warning", "success")
SMTP_SECURITY = ("starttls", "ssl", "none")
PRUNE_MODES = ("after_run", "never")
MIN_BLOCK_SIZE = 256 * 1024
MAX_BLOCK_SIZE = 4 * 1024 * 1024
DEFAULT_BLOCK_SIZE = 1024 * 1024

SAVE_HEADER = (
    "# hcbak config. hcbak commands rewrite this file (comments are not kept);\n"
    "# hand edits are welcome. Reference: docs/config.md\n"
)


# --- model ------------------------------------------------------------------------------
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

    @property
    def encrypted(self) -> bool:
        return self.passphrase is not None


# --- S3 repositories (issue 20, helper s3): model ------------------------------------
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


S3_KEYS = ("bucket", "prefix", "endpoint", "region", "profile", "upload_parallel",
           "credentials_env", "credentials_file", "credentials_command",
           "immutable_days", "immutable_mode")  # fmt: skip
MAX_UPLOAD_PARALLEL = 64
IMMUTABLE_MODES = ("compliance", "governance")
MAX_IMMUTABLE_DAYS = 36500


def s3_repo_to_dict(s: S3RepoConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"bucket": s.bucket}
    for key in ("prefix", "endpoint", "region", "profile"):
        if getattr(s, key):
            out[key] = getattr(s, key)
    out.update(secret_to_dict("credentials", s.credentials))
    if s.upload_parallel != S3RepoConfig("").upload_parallel:
        out["upload_parallel"] = s.upload_parallel
    if s.immutable_days:
        out["immutable_days"] = s.immutable_days
        out["immutable_mode"] = s.immutable_mode
    return out


def parse_endpoint(value: object) -> str:
    """An S3 endpoint URL: http(s)://host[:port][/path] (S3 repositories, issue 20)."""
    from urllib.parse import urlsplit

    text = str(value).strip() if isinstance(value, str) else ""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an endpoint URL (http://HOST:PORT or https://HOST)")
    if parts.username or parts.password or parts.query:
        raise ValueError("an endpoint URL takes no user, password or query (keys: credentials_*)")
    return text.rstrip("/")


# --- end of S3 model block ------------------------------------------------------------


@dataclass
class Retention:
    """keep_* rules of a job; a point is kept when any rule keeps it."""

    keep_last: int | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None
    keep_yearly: int | None = None
    keep_within: str | None = None

    def is_empty(self) -> bool:
        return all(getattr(self, name) is None for name in RETENTION_KEYS)


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
        hint = _did_you_mean(name, table) or f"see `{list_cmd}`"
        raise NotFoundError(f"no {kind} named {name!r}", hint=hint) from None


def jobs_using(config: Config, cluster: str | None = None, repo: str | None = None) -> list[str]:
    """Names of jobs that use `cluster` and/or `repo` (sorted): removal must refuse them."""
    return sorted(
        job.name
        for job in config.jobs.values()
        if (cluster is not None and job.cluster == cluster)
        or (repo is not None and job.repo == repo)
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


# --- paths ------------------------------------------------------------------------------
def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def default_config_path() -> Path:
    """$HCBAK_CONFIG, else /etc/hcbak/config.yaml for root, else the user config dir."""
    env = os.environ.get("HCBAK_CONFIG")
    if env:
        return Path(env).expanduser()
    if _is_root():
        return Path("/etc/hcbak/config.yaml")
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "hcbak" / "config.yaml"


def state_dir(config: Config | None = None) -> Path:
    """$HCBAK_STATE_DIR, else config `state_dir`, else /var/lib/hcbak (root) or XDG state."""
    env = os.environ.get("HCBAK_STATE_DIR")
    if env:
        return Path(env).expanduser()
    if config is not None and config.state_dir:
        return Path(config.state_dir).expanduser()
    if _is_root():
        return Path("/var/lib/hcbak")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "hcbak"


# --- value validators (shared with the CLI) ---------------------------------------------
def validate_name(name: str, kind: str = "name") -> str:
    """Names become file and lock names: letters, digits, '-' and '_' only."""
    if not NAME_RE.match(name):
        raise ValueError(f"{kind} {name!r} may contain only letters, digits, '-' and '_'")
    return name


def validate_email(address: str) -> str:
    """One address, `name@domain`: the same check the config's notify.email.to gets."""
    if not _EMAIL_RE.match(address):
        raise ValueError(f"{address!r} is not an email address")
    return address


# The data disk types: what a job's disk filter can name, and what selection backs up.
FILTER_DISK_TYPES = ("VIRTIO_DISK", "SCSI_DISK", "IDE_DISK")
_UUID_RE = re.compile(r"^[0-9A-Fa-f]{8}(-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}$")


def validate_disk_filter(item: str) -> str:
    """A slot number, a data disk type or a disk uuid: a typo here would otherwise
    leave every disk of the job's VMs out without a word."""
    text = str(item).strip()
    if text.isdigit() or text.upper() in FILTER_DISK_TYPES or _UUID_RE.match(text):
        return text
    raise ValueError(
        f"disk {item!r} is not a slot number, a disk type ({', '.join(FILTER_DISK_TYPES)}) "
        "or a disk uuid"
    )


_HOST_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


def validate_node(address: str) -> str:
    """`host`, `host:port` or `[ipv6]:port`; https is implied."""
    host, port = address, None
    if address.startswith("["):
        inner, sep, rest = address[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"node address {address!r} is malformed")
        host, port = inner, rest[1:] or None
        _check_ip(host, address)
    elif address.count(":") == 1:
        host, port = address.split(":")
    elif address.count(":") > 1:
        _check_ip(address, address)
        return address
    if port is not None and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"node address {address!r} has a bad port (1-65535)")
    if not address.startswith("[") and not _HOST_RE.match(host):
        raise ValueError(f"node address {address!r} is not a host name or IP address")
    return address


def _check_ip(text: str, address: str) -> None:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"node address {address!r} is not a valid IP address") from None


def normalize_fingerprint(text: str) -> str:
    """SHA-256 fingerprint as 64 lowercase hex digits. Accepted as people paste them:
    any case, colons or spaces between bytes, a leading `sha256/`, `sha256=` or
    `SHA256:`. The one parser for the config, the CLI and the TLS layer."""
    cleaned = text.strip().lower().replace(" ", "")
    if cleaned.startswith("sha256"):
        cleaned = cleaned.removeprefix("sha256").lstrip("/=:")
    cleaned = cleaned.replace(":", "")
    if not re.fullmatch(r"[0-9a-f]{64}", cleaned):
        raise ValueError("fingerprint must be a SHA-256 hash: 64 hex digits (colons allowed)")
    return cleaned


_SIZE_RE = re.compile(r"^(\d+)\s*([kmg]?)(i?b?)$", re.IGNORECASE)


def parse_block_size(value: object) -> int:
    """1048576, "1MiB", "1M", "256KiB", "256k": a power of two from 256 KiB to 4 MiB."""
    if isinstance(value, bool):
        raise ValueError("block_size must be a size like 1MiB")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (match := _SIZE_RE.match(value.strip())):
        size = (
            int(match.group(1))
            * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match.group(2).lower()]
        )
    else:
        raise ValueError(f"block_size {value!r} is not a size like 1MiB, 4M or 262144")
    if not MIN_BLOCK_SIZE <= size <= MAX_BLOCK_SIZE or size & (size - 1):
        raise ValueError("block_size must be a power of two from 256KiB to 4MiB")
    return size


def format_block_size(size: int) -> str:
    if size % (1024 * 1024) == 0:
        return f"{size // (1024 * 1024)}MiB"
    return f"{size // 1024}KiB"


# --- loading ----------------------------------------------------------------------------
def load_config(path: Path | None = None, *, missing_ok: bool = False) -> Config:
    """Read and validate the config; the first problem raises ConfigError (exit 2).

    `missing_ok` is for commands that add things: they start from an empty config and
    create the file on save.
    """
    path = Path(path).expanduser() if path is not None else default_config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if missing_ok:
            return Config(path=path)
        raise ConfigError(
            "config file does not exist",
            path=str(path),
            hint="create it with `hcbak cluster add NAME --node ADDRESS --username USER "
            "--password-env VAR`, or pass --config / set $HCBAK_CONFIG",
        ) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a config file", path=str(path)) from None
    except PermissionError:
        raise ConfigError("config file is not readable (permission denied)", path=str(path))
    except UnicodeDecodeError:
        raise ConfigError("config file is not UTF-8 text", path=str(path)) from None
    config = parse_config(text, path)
    _check_permissions(config)
    return config


def parse_config(text: str, path: Path) -> Config:
    """Validate YAML `text` into a Config (errors name `path`)."""
    try:
        root = _compose(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        if exc.context_mark is not None and "end of stream" in (exc.problem or ""):
            # An unclosed quote or bracket runs to the end of the file: the line to fix
            # is where it opened, not the last one.
            mark = exc.context_mark
            what = (exc.context or "a value").removeprefix("while scanning ")
            problem = f"{what} opened here is never closed ({exc.problem})"
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(f"invalid YAML: {problem}", path=str(path), line=line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", path=str(path)) from None
    return _Parser(path).config(root)


_last_document: tuple[str, yaml.Node | None] | None = None


def _compose(text: str) -> yaml.Node | None:
    """yaml.compose, remembering the last document.

    `job run` reads the config twice (the console script reads it early to start the
    repository's scrypt), and composing is most of a parse (11 ms of 12 for
    examples/config.yaml in Python). The parser only reads nodes, so sharing them is
    safe; a Config is built anew from them every time.
    """
    global _last_document
    last = _last_document
    if last is not None and last[0] == text:
        return last[1]
    root = _compose_fast(text)
    _last_document = (text, root)
    return root


_LIBYAML_LOADER = getattr(yaml, "CSafeLoader", None)  # None: PyYAML built without libyaml


def _compose_fast(text: str) -> yaml.Node | None:
    """Compose with libyaml where PyYAML has it: 0.6 ms against 11 ms in Python for
    examples/config.yaml, on every command. Its nodes carry the same tags, values and
    line/column marks. A document it refuses is composed again in Python, whose
    messages name what is wrong (the character, the alias, the expected token) where
    libyaml's do not, so errors read as they always have."""
    if _LIBYAML_LOADER is not None:
        try:
            return yaml.compose(text, Loader=_LIBYAML_LOADER)
        except Exception:  # whatever libyaml refuses, Python judges
            pass
    return yaml.compose(text, Loader=yaml.SafeLoader)


def _check_permissions(config: Config) -> None:
    if not config.has_inline_secret():
        return
    mode = stat.S_IMODE(config.path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"holds an inline secret but is readable by others (mode {mode:04o})",
            path=str(config.path),
            hint=f"run `chmod 600 {config.path}` or use password_env/password_file instead",
        )


Node = yaml.Node
_CONSTRUCTOR = yaml.SafeLoader("")


class _Parser:
    """Walks the composed YAML node tree; every error carries the node's line."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, node: Node | None, where: str, what: str, hint: str | None = None) -> None:
        line = node.start_mark.line + 1 if node is not None else None
        raise ConfigError(f"{where}: {what}", path=str(self.path), line=line, hint=hint)

    # -- document ---------------------------------------------------------------------
    def config(self, root: Node | None) -> Config:
        config = Config(path=self.path)
        if root is None or (isinstance(root, yaml.ScalarNode) and root.value == ""):
            return config
        top = self.mapping(
            root, "config", ("state_dir", "smtp", "clusters", "repositories", "jobs")
        )
        if "state_dir" in top:
            config.state_dir = self.string(top["state_dir"], "state_dir")
        if "smtp" in top:
            config.smtp = self.smtp(top["smtp"])
        for name, node, _key in self.named(top.get("clusters"), "clusters"):
            config.clusters[name] = self.cluster(name, node)
        for name, node, _key in self.named(top.get("repositories"), "repositories"):
            config.repositories[name] = self.repo(name, node)
        job_nodes: dict[str, dict[str, Node]] = {}
        for name, node, _key in self.named(top.get("jobs"), "jobs"):
            config.jobs[name] = self.job(name, node)
            job_nodes[name] = self.mapping(node, f"jobs.{name}", None)
        for name, job in config.jobs.items():
            fields = job_nodes[name]
            if job.cluster not in config.clusters:
                self.error(
                    fields["cluster"],
                    f"jobs.{name}.cluster",
                    f"no cluster named {job.cluster!r}",
                    _did_you_mean(job.cluster, config.clusters),
                )
            if job.repo not in config.repositories:
                self.error(
                    fields["repo"],
                    f"jobs.{name}.repo",
                    f"no repository named {job.repo!r}",
                    _did_you_mean(job.repo, config.repositories),
                )
            if job.notify is not None and config.smtp is None:
                self.error(
                    fields["notify"],
                    f"jobs.{name}.notify",
                    "email notification needs an `smtp:` section",
                )
        return config

    def named(self, node: Node | None, where: str) -> list[tuple[str, Node, Node]]:
        """A mapping of name -> section, names validated."""
        if node is None or _is_null(node):
            return []
        if not isinstance(node, yaml.MappingNode):
            self.error(node, where, "must be a mapping of names to settings")
        out = []
        seen: set[str] = set()
        assert isinstance(node, yaml.MappingNode)
        for key, value in node.value:
            name = self.scalar_key(key, where)
            if not NAME_RE.match(name):
                self.error(
                    key, f"{where}.{name}", "names may contain only letters, digits, '-' and '_'"
                )
            if name in seen:
                self.error(key, f"{where}.{name}", "defined twice")
            seen.add(name)
            out.append((name, value, key))
        return out

    # -- sections ---------------------------------------------------------------------
    def cluster(self, name: str, node: Node) -> ClusterConfig:
        where = f"clusters.{name}"
        keys = (
            "nodes",
            "username",
            *_secret_keys("password"),
            "tls",
            "worker_vm",
            "device_root",
            "timeouts",
            "retries",
        )
        m = self.mapping(node, where, keys)
        nodes_node = self.require(m, "nodes", node, where)
        nodes = self.string_list(nodes_node, f"{where}.nodes")
        if not nodes:
            self.error(nodes_node, f"{where}.nodes", "needs at least one node address")
        for item, address in zip(_seq_items(nodes_node), nodes, strict=True):
            self.check(item, f"{where}.nodes", validate_node, address)
            if nodes.count(address) > 1:
                self.error(item, f"{where}.nodes", f"{address} is listed twice")
        password = self.secret(m, "password", node, where)
        if password is None:
            self.error(
                node, where, "needs password_env, password_file, password_command or password"
            )
        assert password is not None
        cluster = ClusterConfig(
            name=name,
            nodes=nodes,
            username=self.string(self.require(m, "username", node, where), f"{where}.username"),
            password=password,
        )
        if "tls" in m:
            cluster.tls = self.tls(m["tls"], f"{where}.tls", nodes)
        if "worker_vm" in m:
            cluster.worker_vm = self.string(m["worker_vm"], f"{where}.worker_vm")
        if "device_root" in m:
            cluster.device_root = self.string(m["device_root"], f"{where}.device_root")
        if "timeouts" in m:
            t = self.mapping(m["timeouts"], f"{where}.timeouts", tuple(_TIMEOUT_FIELDS))
            for tkey, attr in _TIMEOUT_FIELDS.items():
                if tkey in t:
                    setattr(cluster, attr, self.number(t[tkey], f"{where}.timeouts.{tkey}"))
        if "retries" in m:
            cluster.retries = self.integer(m["retries"], f"{where}.retries", minimum=0)
        return cluster

    def tls(self, node: Node, where: str, nodes: list[str]) -> TLSConfig:
        m = self.mapping(node, where, ("ca_file", "fingerprints", "insecure"))
        tls = TLSConfig()
        if "ca_file" in m:
            tls.ca_file = self.string(m["ca_file"], f"{where}.ca_file")
        if "insecure" in m:
            tls.insecure = self.boolean(m["insecure"], f"{where}.insecure")
        if "fingerprints" in m:
            fps = self.mapping(m["fingerprints"], f"{where}.fingerprints", None)
            for address, fp_node in fps.items():
                if address not in nodes:
                    self.error(
                        fp_node,
                        f"{where}.fingerprints",
                        f"{address} is not one of the cluster's nodes",
                        _did_you_mean(address, nodes),
                    )
                text = self.string(fp_node, f"{where}.fingerprints.{address}")
                tls.fingerprints[address] = self.check(
                    fp_node, f"{where}.fingerprints.{address}", normalize_fingerprint, text
                )
        if tls.insecure and (tls.ca_file or tls.fingerprints):
            self.error(node, where, "insecure: true cannot be combined with ca_file/fingerprints")
        return tls

    def repo(self, name: str, node: Node) -> RepoConfig:
        where = f"repositories.{name}"
        keys = ("path", "s3", "compression", "block_size", "repo_id", *_secret_keys("passphrase"))
        m = self.mapping(node, where, keys)
        if "s3" in m:  # an S3 repository: `path` is its location, never written
            if "path" in m:
                self.error(m["path"], f"{where}.path", "give either path or s3, not both")
            s3 = self.s3_repo(m["s3"], f"{where}.s3")
            repo = RepoConfig(name=name, path=s3.location, s3=s3)
        else:
            repo = RepoConfig(
                name=name,
                path=self.string(self.require(m, "path", node, where), f"{where}.path"),
            )
        if "compression" in m:
            repo.compression = self.choice(m["compression"], f"{where}.compression", COMPRESSIONS)
        if "block_size" in m:
            value = self.value(m["block_size"])
            repo.block_size = self.check(
                m["block_size"], f"{where}.block_size", parse_block_size, value
            )
        if "repo_id" in m:
            text = self.string(m["repo_id"], f"{where}.repo_id")
            repo.repo_id = self.check(m["repo_id"], f"{where}.repo_id", parse_repo_id, text)
        repo.passphrase = self.secret(m, "passphrase", node, where)
        return repo

    # -- S3 repositories (issue 20, helper s3) -------------------------------------------
    def s3_repo(self, node: Node, where: str) -> S3RepoConfig:
        from hcbak.repo.storage.s3_target import parse_s3_target

        m = self.mapping(node, where, S3_KEYS)
        bucket = self.string(self.require(m, "bucket", node, where), f"{where}.bucket")
        prefix = self.string(m["prefix"], f"{where}.prefix") if "prefix" in m else ""
        target = self.check(
            m.get("prefix", m["bucket"]), where, parse_s3_target, f"{bucket}/{prefix}"
        )
        s3 = S3RepoConfig(bucket=target.bucket, prefix=target.prefix)
        if "endpoint" in m:
            s3.endpoint = self.check(
                m["endpoint"], f"{where}.endpoint", parse_endpoint, self.value(m["endpoint"])
            )
        for key in ("region", "profile"):
            if key in m:
                setattr(s3, key, self.string(m[key], f"{where}.{key}"))
        if "upload_parallel" in m:
            s3.upload_parallel = self.integer(
                m["upload_parallel"],
                f"{where}.upload_parallel",
                minimum=1,
                maximum=MAX_UPLOAD_PARALLEL,
            )
        s3.credentials = self.secret(m, "credentials", node, where)
        if "immutable_days" in m:
            s3.immutable_days = self.integer(
                m["immutable_days"],
                f"{where}.immutable_days",
                minimum=0,
                maximum=MAX_IMMUTABLE_DAYS,
            )
        if "immutable_mode" in m:
            s3.immutable_mode = self.choice(
                m["immutable_mode"], f"{where}.immutable_mode", IMMUTABLE_MODES
            )
        return s3

    def job(self, name: str, node: Node) -> JobConfig:
        where = f"jobs.{name}"
        keys = (
            "cluster",
            "repo",
            "vms",
            "tags",
            "exclude",
            "disks",
            "retention",
            "schedule",
            "parallel",
            "retries",
            "retry_wait",
            "alert_after",
            "prune",
            "quiesce",
            "notify",
            "hooks",
        )
        m = self.mapping(node, where, keys)
        job = JobConfig(
            name=name,
            cluster=self.string(self.require(m, "cluster", node, where), f"{where}.cluster"),
            repo=self.string(self.require(m, "repo", node, where), f"{where}.repo"),
        )
        for attr in ("vms", "tags", "exclude", "disks"):
            if attr in m:
                setattr(job, attr, self.string_list(m[attr], f"{where}.{attr}"))
        for item in job.disks:
            self.check(m["disks"], f"{where}.disks", validate_disk_filter, item)
        if not job.vms and not job.tags:
            self.error(node, where, "selects no VMs: give `vms:` and/or `tags:`")
        if "retention" in m:
            job.retention = self.retention(m["retention"], f"{where}.retention")
        if "schedule" in m:
            text = self.string(m["schedule"], f"{where}.schedule")
            self.check(m["schedule"], f"{where}.schedule", CronSchedule.parse, text)
            job.schedule = text
        if "parallel" in m:
            job.parallel = self.integer(m["parallel"], f"{where}.parallel", minimum=1)
        if "retries" in m:
            job.retries = self.integer(m["retries"], f"{where}.retries", minimum=0)
        if "retry_wait" in m:
            job.retry_wait = self.number(m["retry_wait"], f"{where}.retry_wait", allow_zero=True)
        if "alert_after" in m:
            job.alert_after = self.duration(m["alert_after"], f"{where}.alert_after")
        if "prune" in m:
            job.prune = self.choice(m["prune"], f"{where}.prune", PRUNE_MODES)
        if "quiesce" in m:
            job.quiesce = self.boolean(m["quiesce"], f"{where}.quiesce")
        if "notify" in m:
            job.notify = self.notify(m["notify"], f"{where}.notify")
        if "hooks" in m:
            hooks = self.mapping(m["hooks"], f"{where}.hooks", ("pre", "post"))
            if "pre" in hooks:
                job.pre_hook = self.string(hooks["pre"], f"{where}.hooks.pre")
            if "post" in hooks:
                job.post_hook = self.string(hooks["post"], f"{where}.hooks.post")
        return job

    def retention(self, node: Node, where: str) -> Retention:
        m = self.mapping(node, where, RETENTION_KEYS)
        retention = Retention()
        for key in RETENTION_KEYS[:-1]:
            if key in m:
                setattr(retention, key, self.integer(m[key], f"{where}.{key}", minimum=0))
        if "keep_within" in m:
            retention.keep_within = self.duration(m["keep_within"], f"{where}.keep_within")
        return retention

    def notify(self, node: Node, where: str) -> EmailNotify:
        m = self.mapping(node, where, ("email",))
        email_node = self.require(m, "email", node, where)
        e = self.mapping(email_node, f"{where}.email", ("to", "on"))
        to_node = self.require(e, "to", email_node, f"{where}.email")
        to = self.string_list(to_node, f"{where}.email.to")
        if not to:
            self.error(to_node, f"{where}.email.to", "needs at least one address")
        for item, addr in zip(_seq_items(to_node), to, strict=True):
            self.check(item, f"{where}.email.to", validate_email, addr)
        notify = EmailNotify(to=to)
        if "on" in e:
            notify.on = self.string_list(e["on"], f"{where}.email.on")
            for item, event in zip(_seq_items(e["on"]), notify.on, strict=True):
                if event not in NOTIFY_EVENTS:
                    self.error(
                        item,
                        f"{where}.email.on",
                        f"{event!r} is not one of {', '.join(NOTIFY_EVENTS)}",
                        _did_you_mean(event, NOTIFY_EVENTS),
                    )
        return notify

    def smtp(self, node: Node) -> SMTPConfig:
        where = "smtp"
        keys = ("host", "port", "security", "username", *_secret_keys("password"), "sender")
        m = self.mapping(node, where, keys)
        smtp = SMTPConfig(
            host=self.string(self.require(m, "host", node, where), "smtp.host"),
            sender=self.string(self.require(m, "sender", node, where), "smtp.sender"),
        )
        self.check(m["sender"], "smtp.sender", validate_email, smtp.sender)
        if "port" in m:
            smtp.port = self.integer(m["port"], "smtp.port", minimum=1, maximum=65535)
        if "security" in m:
            smtp.security = self.choice(m["security"], "smtp.security", SMTP_SECURITY)
        if "username" in m:
            smtp.username = self.string(m["username"], "smtp.username")
        smtp.password = self.secret(m, "password", node, where)
        return smtp

    # -- secrets ----------------------------------------------------------------------
    def secret(self, m: dict[str, Node], prefix: str, parent: Node, where: str) -> SecretRef | None:
        present = [k for k in _secret_keys(prefix) if k in m]
        if not present:
            return None
        if len(present) > 1:
            self.error(m[present[1]], where, f"give only one of {', '.join(present)}")
        key = present[0]
        text = self.string(m[key], f"{where}.{key}")
        if key == prefix:
            return SecretRef(value=Secret(text))
        if key.endswith("_env"):
            return SecretRef(env=text)
        if key.endswith("_file"):
            return SecretRef(file=text)
        return SecretRef(command=text)

    # -- scalars ----------------------------------------------------------------------
    def mapping(self, node: Node, where: str, allowed: tuple[str, ...] | None) -> dict[str, Node]:
        if not isinstance(node, yaml.MappingNode):
            self.error(node, where, "must be a mapping (key: value lines)")
        assert isinstance(node, yaml.MappingNode)
        out: dict[str, Node] = {}
        for key, value in node.value:
            name = self.scalar_key(key, where)
            if allowed is not None and name not in allowed:
                self.error(
                    key,
                    f"{where}.{name}" if where != "config" else name,
                    "unknown key",
                    _did_you_mean(name, allowed) or f"allowed: {', '.join(allowed)}",
                )
            if name in out:
                self.error(key, f"{where}.{name}", "key given twice")
            out[name] = value
        return out

    def scalar_key(self, key: Node, where: str) -> str:
        if not isinstance(key, yaml.ScalarNode):
            self.error(key, where, "keys must be plain strings")
        return str(key.value)

    def require(self, m: dict[str, Node], key: str, parent: Node, where: str) -> Node:
        if key not in m or _is_null(m[key]):
            self.error(m.get(key, parent), f"{where}.{key}", "is required")
        return m[key]

    def value(self, node: Node) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            return node
        return _CONSTRUCTOR.construct_object(node)

    def string(self, node: Node, where: str) -> str:
        # The scalar's source text, not its YAML 1.1 value: `password: 0123` is the
        # string "0123", not the octal number 83, and `username: yes` is not a bool.
        if not isinstance(node, yaml.ScalarNode) or _is_null(node):
            self.error(node, where, "must be a string")
        text = str(node.value)
        if not text.strip():
            self.error(node, where, "must not be empty")
        return text

    def string_list(self, node: Node, where: str) -> list[str]:
        if _is_null(node):
            return []
        if isinstance(node, yaml.ScalarNode):
            return [self.string(node, where)]
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, where, "must be a list")
        return [self.string(item, where) for item in _seq_items(node)]

    def integer(
        self, node: Node, where: str, *, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        value = self.value(node)
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(node, where, f"must be a whole number, not {_show(value)}")
        if minimum is not None and value < minimum:
            self.error(node, where, f"must be >= {minimum}, not {value}")
        if maximum is not None and value > maximum:
            self.error(node, where, f"must be <= {maximum}, not {value}")
        return int(value)

    def number(self, node: Node, where: str, *, allow_zero: bool = False) -> float:
        value = self.value(node)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.error(node, where, f"must be a number of seconds, not {_show(value)}")
        if value < 0 or (value == 0 and not allow_zero):
            self.error(node, where, f"must be {'>= 0' if allow_zero else '> 0'}, not {value}")
        return float(value)

    def boolean(self, node: Node, where: str) -> bool:
        value = self.value(node)
        if not isinstance(value, bool):
            self.error(node, where, f"must be true or false, not {_show(value)}")
        return bool(value)

    def choice(self, node: Node, where: str, choices: tuple[str, ...]) -> str:
        value = self.string(node, where)
        if value not in choices:
            self.error(
                node,
                where,
                f"{value!r} is not one of {', '.join(choices)}",
                _did_you_mean(value, choices),
            )
        return value

    def duration(self, node: Node, where: str) -> str:
        text = self.string(node, where)
        self.check(node, where, parse_duration, text)
        return text

    def check(self, node: Node, where: str, fn: Callable[[Any], T], arg: Any) -> T:
        """Run a value validator; its ValueError becomes a located ConfigError."""
        try:
            return fn(arg)
        except ValueError as exc:
            self.error(node, where, str(exc))
            raise  # pragma: no cover - error() always raises


_TIMEOUT_FIELDS = {
    "connect": "connect_timeout",
    "read": "read_timeout",
    "task": "task_timeout",
    "update_wait": "update_wait",
}
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+$")


def _secret_keys(prefix: str) -> tuple[str, ...]:
    return (f"{prefix}_env", f"{prefix}_file", f"{prefix}_command", prefix)


def _seq_items(node: Node) -> list[Node]:
    return list(node.value) if isinstance(node, yaml.SequenceNode) else [node]


def _is_null(node: Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _show(value: Any) -> str:
    return "a list or mapping" if isinstance(value, yaml.Node) else repr(value)


def _did_you_mean(word: str, candidates: Any) -> str | None:
    import difflib  # only a misspelt name needs it

    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else None


# --- saving -----------------------------------------------------------------------------
def save_config(config: Config) -> None:
    """Write the config atomically with mode 0600 (temp in the same dir, fsync, rename)."""
    path = config.path
    text = SAVE_HEADER + yaml.safe_dump(
        config_to_dict(config), sort_keys=False, default_flow_style=False, width=100
    )
    try:
        _write_atomic(path, text)
    except OSError as exc:
        message = f"could not save the config {path}: {exc.strerror or exc}"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # a full disk is not a config error
            raise HcbakError(message, hint="the config is unchanged") from None
        raise ConfigError(
            f"could not save the config: {exc.strerror or exc}", path=str(path)
        ) from None


def _write_atomic(path: Path, text: str) -> None:
    # A crash at any point leaves either the old file or the new one, never a mix:
    # the temp file is complete and fsynced before the rename replaces the old file.
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    import tempfile  # only commands that edit the config write it

    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory entry is; some filesystems
    # refuse fsync on directories, which is harmless.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def config_to_dict(config: Config) -> dict[str, Any]:
    """The YAML layout `save_config` writes (and `config show --json` prints)."""
    out: dict[str, Any] = {}
    if config.state_dir:
        out["state_dir"] = config.state_dir
    if config.smtp is not None:
        out["smtp"] = smtp_to_dict(config.smtp)
    out["clusters"] = {n: cluster_to_dict(c) for n, c in sorted(config.clusters.items())}
    out["repositories"] = {n: repo_to_dict(r) for n, r in sorted(config.repositories.items())}
    out["jobs"] = {n: job_to_dict(j) for n, j in sorted(config.jobs.items())}
    return out


def secret_to_dict(prefix: str, ref: SecretRef | None, *, reveal: bool = True) -> dict[str, str]:
    """YAML keys for a reference; `reveal=False` masks an inline value (for display)."""
    if ref is None:
        return {}
    if ref.env:
        return {f"{prefix}_env": ref.env}
    if ref.file:
        return {f"{prefix}_file": ref.file}
    if ref.command:
        return {f"{prefix}_command": ref.command}
    if ref.value is not None:
        return {prefix: ref.value.reveal() if reveal else "***"}
    return {}


def cluster_to_dict(c: ClusterConfig, *, reveal: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"nodes": list(c.nodes), "username": c.username}
    out.update(secret_to_dict("password", c.password, reveal=reveal))
    tls: dict[str, Any] = {}
    if c.tls.ca_file:
        tls["ca_file"] = c.tls.ca_file
    if c.tls.fingerprints:
        tls["fingerprints"] = dict(sorted(c.tls.fingerprints.items()))
    if c.tls.insecure:
        tls["insecure"] = True
    if tls:
        out["tls"] = tls
    if c.worker_vm:
        out["worker_vm"] = c.worker_vm
    if c.device_root != "/dev":
        out["device_root"] = c.device_root
    defaults = ClusterConfig(name="", nodes=[], username="", password=SecretRef())
    timeouts = {
        key: _num(getattr(c, attr))
        for key, attr in _TIMEOUT_FIELDS.items()
        if getattr(c, attr) != getattr(defaults, attr)
    }
    if timeouts:
        out["timeouts"] = timeouts
    if c.retries != defaults.retries:
        out["retries"] = c.retries
    return out


def parse_repo_id(text: str) -> str:
    """A repository id as `repo add` records it: 32 lowercase hex digits."""
    if len(text) != 32 or text.strip("0123456789abcdef"):
        raise ValueError(f"{text!r} is not a repository id (32 lowercase hex digits)")
    return text


def repo_to_dict(r: RepoConfig, *, reveal: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"s3": s3_repo_to_dict(r.s3)} if r.s3 else {"path": r.path}
    out |= {
        "compression": r.compression,
        "block_size": format_block_size(r.block_size),
    }
    if r.repo_id is not None:
        out["repo_id"] = r.repo_id
    out.update(secret_to_dict("passphrase", r.passphrase, reveal=reveal))
    return out


def job_to_dict(j: JobConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"cluster": j.cluster, "repo": j.repo}
    for attr in ("vms", "tags", "exclude", "disks"):
        if getattr(j, attr):
            out[attr] = list(getattr(j, attr))
    retention = {k: getattr(j.retention, k) for k in RETENTION_KEYS}
    retention = {k: v for k, v in retention.items() if v is not None}
    if retention:
        out["retention"] = retention
    if j.schedule:
        out["schedule"] = j.schedule
    out["parallel"] = j.parallel
    out["retries"] = j.retries
    out["retry_wait"] = _num(j.retry_wait)
    if j.alert_after:
        out["alert_after"] = j.alert_after
    if j.prune:
        out["prune"] = j.prune
    if j.quiesce:
        out["quiesce"] = True
    if j.notify is not None:
        out["notify"] = {"email": {"to": list(j.notify.to), "on": list(j.notify.on)}}
    hooks = {k: v for k, v in (("pre", j.pre_hook), ("post", j.post_hook)) if v}
    if hooks:
        out["hooks"] = hooks
    return out


def smtp_to_dict(s: SMTPConfig, *, reveal: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"host": s.host, "port": s.port, "security": s.security}
    if s.username:
        out["username"] = s.username
    out.update(secret_to_dict("password", s.password, reveal=reveal))
    out["sender"] = s.sender
    return out


def _num(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value
