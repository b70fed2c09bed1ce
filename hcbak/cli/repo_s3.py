"""The options of `repo add --s3 ...` and the `s3:` config entry they make."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from hcbak.cli.common import check_value, secret_ref_from_options
from hcbak.errors import UsageError

if TYPE_CHECKING:
    from hcbak.config import S3RepoConfig

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
) -> S3RepoConfig:
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
