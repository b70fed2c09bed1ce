"""The YAML config: typed model, validating loader with line numbers, atomic save.

Plain dataclasses, not pydantic (docs/config.md says why): the loader walks PyYAML's
node tree so each error can name `file:line: field: what`, and the model stays a
leaf package importable from anywhere without a validation framework.

Commands that edit the config rewrite the whole file with a fixed layout; comments
are not preserved (documented), hand edits are welcome.

The package's rooms: `model` (the records: Config, ClusterConfig, RepoConfig,
JobConfig, Retention, ...), `validation` (what a single value may be, shared with the
CLI), `paths` (where the config and the state live), `parser` (YAML text -> Config,
every error located) and `save` (Config -> YAML, written atomically). Import from
`hcbak.config`; the names below are the public ones.
"""

from __future__ import annotations

from hcbak.config.model import (
    RETENTION_KEYS,
    ClusterConfig,
    Config,
    EmailNotify,
    JobConfig,
    RepoConfig,
    Retention,
    S3RepoConfig,
    SMTPConfig,
    TLSConfig,
    ensure_unused,
    jobs_using,
)
from hcbak.config.parser import load_config, parse_config
from hcbak.config.paths import default_config_path, state_dir
from hcbak.config.save import (
    SAVE_HEADER,
    cluster_to_dict,
    config_to_dict,
    job_to_dict,
    repo_to_dict,
    save_config,
    secret_to_dict,
    smtp_to_dict,
)
from hcbak.config.validation import (
    COMPRESSIONS,
    DEFAULT_BLOCK_SIZE,
    FILTER_DISK_TYPES,
    IMMUTABLE_MODES,
    MAX_BLOCK_SIZE,
    MAX_IMMUTABLE_DAYS,
    MAX_UPLOAD_PARALLEL,
    MIN_BLOCK_SIZE,
    NAME_RE,
    NOTIFY_EVENTS,
    PRUNE_MODES,
    SMTP_SECURITY,
    format_block_size,
    normalize_fingerprint,
    parse_block_size,
    parse_endpoint,
    parse_repo_id,
    validate_disk_filter,
    validate_email,
    validate_name,
    validate_node,
)

__all__ = [
    "COMPRESSIONS",
    "DEFAULT_BLOCK_SIZE",
    "FILTER_DISK_TYPES",
    "IMMUTABLE_MODES",
    "MAX_BLOCK_SIZE",
    "MAX_IMMUTABLE_DAYS",
    "MAX_UPLOAD_PARALLEL",
    "MIN_BLOCK_SIZE",
    "NAME_RE",
    "NOTIFY_EVENTS",
    "PRUNE_MODES",
    "RETENTION_KEYS",
    "SAVE_HEADER",
    "SMTP_SECURITY",
    "ClusterConfig",
    "Config",
    "EmailNotify",
    "JobConfig",
    "RepoConfig",
    "Retention",
    "S3RepoConfig",
    "SMTPConfig",
    "TLSConfig",
    "cluster_to_dict",
    "config_to_dict",
    "default_config_path",
    "ensure_unused",
    "format_block_size",
    "job_to_dict",
    "jobs_using",
    "load_config",
    "normalize_fingerprint",
    "parse_block_size",
    "parse_config",
    "parse_endpoint",
    "parse_repo_id",
    "repo_to_dict",
    "save_config",
    "secret_to_dict",
    "smtp_to_dict",
    "state_dir",
    "validate_disk_filter",
    "validate_email",
    "validate_name",
    "validate_node",
]
