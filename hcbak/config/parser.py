"""YAML text -> Config: composes PyYAML's node tree and walks it, so every error names
`file:line: field: what`."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import TypeVar

import yaml

from hcbak.config.model import (
    RETENTION_KEYS,
    TIMEOUT_FIELDS,
    ClusterConfig,
    Config,
    EmailNotify,
    JobConfig,
    RepoConfig,
    Retention,
    S3RepoConfig,
    SMTPConfig,
    TLSConfig,
)
from hcbak.config.nodes import Node, NodeReader, is_null, seq_items
from hcbak.config.paths import default_config_path
from hcbak.config.validation import (
    COMPRESSIONS,
    IMMUTABLE_MODES,
    MAX_IMMUTABLE_DAYS,
    MAX_UPLOAD_PARALLEL,
    NAME_RE,
    NOTIFY_EVENTS,
    PRUNE_MODES,
    S3_KEYS,
    SMTP_SECURITY,
    did_you_mean,
    normalize_fingerprint,
    parse_block_size,
    parse_endpoint,
    parse_repo_id,
    validate_disk_filter,
    validate_email,
    validate_node,
)
from hcbak.errors import ConfigError
from hcbak.schedule import CronSchedule
from hcbak.secrets import Secret, SecretRef

T = TypeVar("T")


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


class _Parser(NodeReader):
    """Walks the composed YAML node tree, section by section."""

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
                    did_you_mean(job.cluster, config.clusters),
                )
            if job.repo not in config.repositories:
                self.error(
                    fields["repo"],
                    f"jobs.{name}.repo",
                    f"no repository named {job.repo!r}",
                    did_you_mean(job.repo, config.repositories),
                )
            self.check_copy_to(job, fields, config)
            self.check_append_only(job, fields, config)
            if job.notify is not None and config.smtp is None:
                self.error(
                    fields["notify"],
                    f"jobs.{name}.notify",
                    "email notification needs an `smtp:` section",
                )
        return config

    def check_copy_to(self, job: JobConfig, fields: dict[str, Node], config: Config) -> None:
        """Each copy_to target is a configured repository, named once, not the job's own."""
        where = f"jobs.{job.name}.copy_to"
        for i, target in enumerate(job.copy_to):
            if target not in config.repositories:
                hint = did_you_mean(target, config.repositories)
                self.error(fields["copy_to"], where, f"no repository named {target!r}", hint)
            elif target == job.repo:
                self.error(fields["copy_to"], where, f"{target!r} is the job's own repository")
            elif target in job.copy_to[:i]:
                self.error(fields["copy_to"], where, f"{target!r} is named twice")

    def check_append_only(self, job: JobConfig, fields: dict[str, Node], config: Config) -> None:
        """A job into an append-only repository neither forgets nor prunes: that runs on
        a trusted host with write access (the backup host cannot delete there)."""
        repo = config.repositories.get(job.repo)
        if repo is None or not repo.append_only:
            return
        hint = (
            "run retention (`hcbak repo prune --keep-...`) on a trusted host with write "
            'access to the repository (docs/operations.md, "Append-only folders")'
        )
        if not job.retention.is_empty():
            what = f"repository {job.repo!r} is append-only: this host cannot forget points"
            self.error(fields.get("retention"), f"jobs.{job.name}.retention", what, hint)
        if job.prune == "after_run":
            what = f"repository {job.repo!r} is append-only: this host cannot prune"
            self.error(fields.get("prune"), f"jobs.{job.name}.prune", what, hint)

    def named(self, node: Node | None, where: str) -> list[tuple[str, Node, Node]]:
        """A mapping of name -> section, names validated."""
        if node is None or is_null(node):
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
        for item, address in zip(seq_items(nodes_node), nodes, strict=True):
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
            t = self.mapping(m["timeouts"], f"{where}.timeouts", tuple(TIMEOUT_FIELDS))
            for tkey, attr in TIMEOUT_FIELDS.items():
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
                        did_you_mean(address, nodes),
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
        keys = (
            "path",
            "s3",
            "compression",
            "block_size",
            "repo_id",
            "append_only",
            *_secret_keys("passphrase"),
        )
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
        if "append_only" in m:
            repo.append_only = self.boolean(m["append_only"], f"{where}.append_only")
            if repo.append_only and repo.s3 is not None:
                self.error(
                    m["append_only"],
                    f"{where}.append_only",
                    "append_only is for folders; an S3 repository uses immutable_days "
                    "(Object Lock)",
                )
        return repo

    def s3_repo(self, node: Node, where: str) -> S3RepoConfig:
        from hcbak.config.s3_target import parse_s3_target

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
            "copy_to",
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
        if "copy_to" in m:  # names checked with the repositories
            job.copy_to = self.string_list(m["copy_to"], f"{where}.copy_to")
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
        for item, addr in zip(seq_items(to_node), to, strict=True):
            self.check(item, f"{where}.email.to", validate_email, addr)
        notify = EmailNotify(to=to)
        if "on" in e:
            notify.on = self.string_list(e["on"], f"{where}.email.on")
            for item, event in zip(seq_items(e["on"]), notify.on, strict=True):
                if event not in NOTIFY_EVENTS:
                    self.error(
                        item,
                        f"{where}.email.on",
                        f"{event!r} is not one of {', '.join(NOTIFY_EVENTS)}",
                        did_you_mean(event, NOTIFY_EVENTS),
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


def _secret_keys(prefix: str) -> tuple[str, ...]:
    return (f"{prefix}_env", f"{prefix}_file", f"{prefix}_command", prefix)
