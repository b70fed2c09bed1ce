"""Config -> YAML: the fixed layout commands write back, saved atomically with mode 0600."""

from __future__ import annotations

import errno
from typing import Any

import yaml

from hcbak.config.model import (
    RETENTION_KEYS,
    TIMEOUT_FIELDS,
    ClusterConfig,
    Config,
    JobConfig,
    RepoConfig,
    S3RepoConfig,
    SMTPConfig,
)
from hcbak.config.validation import format_block_size
from hcbak.errors import ConfigError, HcbakError
from hcbak.fsio import write_atomic
from hcbak.secrets import SecretRef

SAVE_HEADER = (
    "# hcbak config. hcbak commands rewrite this file (comments are not kept);\n"
    "# hand edits are welcome. Reference: docs/config.md\n"
)


def save_config(config: Config) -> None:
    """Write the config atomically with mode 0600 (temp in the same dir, fsync, rename)."""
    path = config.path
    text = SAVE_HEADER + yaml.safe_dump(
        config_to_dict(config), sort_keys=False, default_flow_style=False, width=100
    )
    try:
        # A crash at any point leaves either the old file or the new one, never a mix.
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(path, text.encode("utf-8"), mode=0o600)
    except OSError as exc:
        message = f"could not save the config {path}: {exc.strerror or exc}"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # a full disk is not a config error
            raise HcbakError(message, hint="the config is unchanged") from None
        raise ConfigError(
            f"could not save the config: {exc.strerror or exc}", path=str(path)
        ) from None


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
        for key, attr in TIMEOUT_FIELDS.items()
        if getattr(c, attr) != getattr(defaults, attr)
    }
    if timeouts:
        out["timeouts"] = timeouts
    if c.retries != defaults.retries:
        out["retries"] = c.retries
    return out


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


def repo_to_dict(r: RepoConfig, *, reveal: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"s3": s3_repo_to_dict(r.s3)} if r.s3 else {"path": r.path}
    out |= {
        "compression": r.compression,
        "block_size": format_block_size(r.block_size),
    }
    if r.repo_id is not None:
        out["repo_id"] = r.repo_id
    if r.append_only:
        out["append_only"] = True
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
    if j.copy_to:
        out["copy_to"] = list(j.copy_to)
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
