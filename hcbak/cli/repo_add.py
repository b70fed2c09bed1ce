"""`hcbak repo add`: create a repository in an empty folder or S3 bucket/prefix, or
adopt an existing one, and pin it in the config (its id; encrypted or not)."""

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from hcbak.cli.common import (
    check_name,
    check_value,
    load_config_for_edit,
    save_config,
    secret_ref_from_options,
)
from hcbak.cli.options import PassCmd, PassEnv, PassFile
from hcbak.cli.output import info
from hcbak.cli.repo_access import open_configured
from hcbak.config import RepoConfig, parse_block_size
from hcbak.errors import UsageError
from hcbak.secrets import SecretRef

if TYPE_CHECKING:
    from hcbak.config import S3RepoConfig
    from hcbak.repo.storage import ObjectStore

S3Opt = Annotated[
    str | None,
    typer.Option(
        "--s3",
        metavar="BUCKET[/PREFIX]",
        help="An S3 bucket (and key prefix) instead of a folder; the bucket must exist.",
    ),
]
EndpointOpt = Annotated[
    str | None,
    typer.Option(help="S3 endpoint URL (Ceph RGW, MinIO, Wasabi...); default AWS S3."),
]
RegionOpt = Annotated[str | None, typer.Option(help="S3 region (default: the AWS config).")]
ProfileOpt = Annotated[str | None, typer.Option(help="AWS profile for the S3 credentials.")]
CredEnv = Annotated[
    str | None,
    typer.Option(help="Read the S3 keys (KEY_ID:SECRET) from this environment variable."),
]
CredFile = Annotated[str | None, typer.Option(help="Read the S3 keys from this file.")]
CredCmd = Annotated[
    str | None,
    typer.Option(help="Run this command; its stdout is the S3 keys (or export-credentials JSON)."),
]
ParallelOpt = Annotated[
    int | None, typer.Option(help="Parts of a pack uploaded at once (S3, default 4).")
]
ImmutableOpt = Annotated[
    int | None,
    typer.Option(help="S3 Object Lock: keep every point undeletable for N days."),
]
ImmutableModeOpt = Annotated[
    str | None, typer.Option(help="compliance (default: nobody can delete) or governance.")
]


def s3_entry_from_options(
    target: str,
    *,
    endpoint: str | None,
    region: str | None,
    profile: str | None,
    env: str | None,
    file: str | None,
    command: str | None,
    upload_parallel: int | None,
    immutable_days: int | None = None,
    immutable_mode: str | None = None,
) -> "S3RepoConfig":
    """The `s3:` config entry of `repo add --s3 ...`, every value checked."""
    from hcbak.config import (
        IMMUTABLE_MODES,
        MAX_IMMUTABLE_DAYS,
        MAX_UPLOAD_PARALLEL,
        S3RepoConfig,
        parse_endpoint,
    )
    from hcbak.config.s3_target import parse_s3_target

    where = check_value(parse_s3_target, target, "--s3")
    s3 = S3RepoConfig(bucket=where.bucket, prefix=where.prefix, region=region, profile=profile)
    if endpoint is not None:
        s3.endpoint = check_value(parse_endpoint, endpoint, "--endpoint")
    if upload_parallel is not None:
        if not 1 <= upload_parallel <= MAX_UPLOAD_PARALLEL:
            raise UsageError(f"--upload-parallel must be 1..{MAX_UPLOAD_PARALLEL}")
        s3.upload_parallel = upload_parallel
    s3.credentials = secret_ref_from_options(
        "credentials", env=env, file=file, command=command, prompt=False
    )
    if immutable_days is not None:
        if not 1 <= immutable_days <= MAX_IMMUTABLE_DAYS:
            raise UsageError(f"--immutable-days must be 1..{MAX_IMMUTABLE_DAYS}")
        s3.immutable_days = immutable_days
    if immutable_mode is not None:
        if immutable_mode not in IMMUTABLE_MODES:
            raise UsageError("--immutable-mode must be compliance or governance")
        if not immutable_days:
            raise UsageError("--immutable-mode needs --immutable-days")
        s3.immutable_mode = immutable_mode
    return s3


def register(app: typer.Typer) -> None:
    """Add `repo add` to the `repo` group (cli/repo.py)."""
    app.command("add")(add)


def add(
    name: Annotated[str, typer.Argument(help="Repository name in the config.")],
    path: Annotated[
        str | None, typer.Option("--path", help="Folder of the repository (local or NFS).")
    ] = None,
    encrypt: Annotated[
        bool, typer.Option(help="Encrypt with AES-256-GCM (needs a passphrase).")
    ] = False,
    passphrase_env: PassEnv = None,
    passphrase_file: PassFile = None,
    passphrase_command: PassCmd = None,
    compression: Annotated[str, typer.Option(help="lz4 (default), zstd or none.")] = "lz4",
    block_size: Annotated[str, typer.Option(help="Block size, 256KiB..4MiB.")] = "1MiB",
    force: Annotated[bool, typer.Option(help="Replace a config entry of the same name.")] = False,
    s3: S3Opt = None,
    endpoint: EndpointOpt = None,
    region: RegionOpt = None,
    profile: ProfileOpt = None,
    credentials_env: CredEnv = None,
    credentials_file: CredFile = None,
    credentials_command: CredCmd = None,
    upload_parallel: ParallelOpt = None,
    immutable_days: ImmutableOpt = None,
    immutable_mode: ImmutableModeOpt = None,
    append_only: Annotated[
        bool,
        typer.Option(
            "--append-only",
            help="This host never deletes or rewrites the folder's data (forget, prune "
            "and repair run on a trusted host); pair it with `hcbak repo harden`.",
        ),
    ] = False,
) -> None:
    """Create a repository in an empty folder or S3 bucket/prefix, or adopt an existing one.

    The passphrase never goes on the command line: give --passphrase-env,
    --passphrase-file or --passphrase-command, or type it twice at the prompt. S3 keys
    neither: --credentials-env/-file/-command, or the AWS environment and profiles.
    """
    from hcbak.repo import init_repo, is_repo

    check_name(name, "repository name")
    s3_only = (endpoint, region, profile, credentials_env, credentials_file,
               credentials_command, upload_parallel, immutable_days, immutable_mode)  # fmt: skip
    size = _checked_layout(compression, block_size, path, s3, s3_only, append_only)
    config = load_config_for_edit()
    if name in config.repositories and not force:
        raise UsageError(f"repository {name!r} already exists", hint="use --force to replace it")
    s3_entry = None
    if s3 is not None:
        s3_entry = s3_entry_from_options(
            s3, endpoint=endpoint, region=region, profile=profile, env=credentials_env,
            file=credentials_file, command=credentials_command,
            upload_parallel=upload_parallel, immutable_days=immutable_days,
            immutable_mode=immutable_mode,
        )  # fmt: skip
    where, shown = _where(name, path, s3_entry)
    adopting = is_repo(where)
    ref = _passphrase_ref(
        where, shown, adopting, encrypt, passphrase_env, passphrase_file, passphrase_command
    )
    if adopting:
        # Opening proves the passphrase (and, for v2, the settings MAC): the id pinned
        # below is the one of a repository this passphrase really opens.
        probe = RepoConfig(name, shown, passphrase=ref, s3=s3_entry)
        with open_configured(probe, lock=None) as repo:
            found = repo.config
        entry = RepoConfig(
            name, shown, found.compression, found.block_size, ref, found.repo_id, s3_entry
        )
        info(f"adopted existing repository at {shown}")
    else:
        secret = ref.resolve() if ref else None
        made = init_repo(where, compression=compression, block_size=size, passphrase=secret)
        entry = RepoConfig(name, shown, compression, size, ref, made.repo_id, s3_entry)
        info(f"created repository {name} at {shown}")
    entry.append_only = append_only
    config.repositories[name] = entry
    save_config(config)


def _checked_layout(
    compression: str,
    block_size: str,
    path: str | None,
    s3: str | None,
    s3_only: tuple[object, ...],
    append_only: bool,
) -> int:
    """The options that say what and where the repository is, checked together;
    returns the block size."""
    if compression not in ("lz4", "zstd", "none"):
        raise UsageError("--compression must be lz4, zstd or none")
    size = check_value(parse_block_size, block_size, "--block-size")
    if (path is None) == (s3 is None):
        raise UsageError("give either --path FOLDER or --s3 BUCKET[/PREFIX]")
    if s3 is None and any(v is not None for v in s3_only):
        raise UsageError("--endpoint, --region, --profile, --credentials-*, "
                         "--upload-parallel and --immutable-* need --s3")  # fmt: skip
    if append_only and s3 is not None:
        raise UsageError(
            "--append-only is for folders; an S3 repository uses --immutable-days (Object Lock)"
        )
    return size


def _where(
    name: str, path: str | None, s3_entry: "S3RepoConfig | None"
) -> "tuple[Path | str | ObjectStore, str]":
    """Where the repository is (a folder, or the S3 store) and how to show it."""
    from hcbak.repo import is_repo
    from hcbak.repo.storage import store_for

    if s3_entry is None:
        folder = Path(str(path)).expanduser().resolve()
        return folder, str(folder)
    store = store_for(RepoConfig(name, s3_entry.location, s3=s3_entry))
    if s3_entry.immutable_days and is_repo(store):
        _check_object_lock(store)  # adopting (a new repository's create() checks it)
    return store, s3_entry.location


def _check_object_lock(store: object) -> None:
    """An S3 repository adopted with --immutable-days: its bucket must have Object Lock."""
    from hcbak.repo.storage.s3 import S3Store

    assert isinstance(store, S3Store)
    store.check_object_lock()


def _passphrase_ref(
    where: Any,
    shown: str,
    adopting: bool,
    encrypt: bool,
    env: str | None,
    file: str | None,
    command: str | None,
) -> SecretRef | None:
    """The passphrase reference the new entry gets: asked for when the repository is
    (or will be) encrypted, refused when it is not."""
    from hcbak.repo.settings import read_config_doc

    is_encrypted = adopting and read_config_doc(where).get("encryption") is not None
    if adopting and encrypt and not is_encrypted:
        raise UsageError(
            f"{shown} is an unencrypted hcbak repository",
            hint="encryption is chosen when a repository is created; drop --encrypt",
        )
    if not (encrypt or is_encrypted):
        if env or file or command:
            raise UsageError("a passphrase option needs --encrypt")
        return None
    ref = secret_ref_from_options("passphrase", env=env, file=file, command=command, prompt=True)
    if ref is None:
        raise UsageError(
            "an encrypted repository needs a passphrase",
            hint="use --passphrase-env, --passphrase-file or --passphrase-command",
        )
    return ref
