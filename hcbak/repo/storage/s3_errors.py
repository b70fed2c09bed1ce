"""What a failed S3 request means for the user: boto3/botocore failures as hcbak
errors, each one line naming the repository location and the endpoint (exit codes per
docs/exit-codes.md: refused keys, a missing bucket, a clock the server rejects, TLS, a
hang or an unreachable endpoint are exit 4; missing credentials exit 2)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import botocore.exceptions

from hcbak.errors import HcbakError, NoSpaceError, RepoError, SecretError
from hcbak.repo import fsio
from hcbak.repo.storage.base import ObjectMissingError

_bx = botocore.exceptions
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_AUTH_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
     "TokenRefreshRequired", "AuthorizationHeaderMalformed", "InvalidSecurity"}
)  # fmt: skip
_QUOTA_CODES = frozenset({"QuotaExceeded", "InsufficientCapacity", "EntityTooLarge"})
_NO_CREDENTIALS = (_bx.NoCredentialsError, _bx.PartialCredentialsError)
_TIMEOUTS = (_bx.ConnectTimeoutError, _bx.ReadTimeoutError)
_UNREACHABLE = (_bx.EndpointConnectionError, _bx.ConnectionClosedError)


@dataclass(frozen=True)
class What:
    """The request that failed and where: for the message."""

    what: str  # "read", "write", "upload"...
    location: str  # s3://bucket/prefix
    key: str | None
    endpoint: str
    bucket: str
    attempts: int
    spool_dir: Path


def describe_s3_error(exc: Exception, w: What) -> HcbakError:
    """The hcbak error for a boto3/botocore failure: one line, naming the location."""
    what, key = w.what, w.key
    where = f"{w.location}/{key}" if key else w.location
    at = f"{where} ({w.endpoint})"
    if isinstance(exc, HcbakError):
        return exc
    if isinstance(exc, _bx.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        message = str(err.get("Message") or "").strip()
        if code == "NoSuchBucket":
            return RepoError(
                f"bucket {w.bucket} does not exist at {w.endpoint}",
                hint="create it first, or check the bucket name and --endpoint",
            )
        if code in _MISSING_CODES:
            return ObjectMissingError(f"{key} is missing in repository {w.location}")
        if code in _AUTH_CODES:
            return RepoError(
                f"{w.endpoint} refused the S3 credentials for {w.location} ({code})",
                hint="check the access key and secret (credentials_* or AWS_* / profile)",
            )
        if code == "RequestTimeTooSkewed":
            return RepoError(
                f"{w.endpoint} rejects this host's clock (RequestTimeTooSkewed)",
                hint="synchronise the clock (NTP); S3 accepts at most 15 minutes of skew",
            )
        if code in ("AccessDenied", "403") or status == 403:
            return RepoError(
                f"access denied: cannot {what} {at}",
                hint="wrong keys, or the key lacks permission on the bucket",
            )
        if code in _QUOTA_CODES:
            return NoSpaceError(f"no space: cannot {what} {at}: {code}")
        detail = f"{code}: {message}" if message else code or f"HTTP {status}"
        return RepoError(f"cannot {what} {at}: {detail}")
    if isinstance(exc, _NO_CREDENTIALS):
        return SecretError(
            f"no S3 credentials for {w.location}",
            hint="give credentials_env/_file/_command, or set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY or an AWS profile",
        )
    if isinstance(exc, _bx.SSLError):
        return RepoError(
            f"TLS error talking to {w.endpoint}: {short(exc)}",
            hint="check the endpoint's certificate; AWS_CA_BUNDLE names a private CA",
        )
    if isinstance(exc, _TIMEOUTS):
        return RepoError(
            f"S3 endpoint {w.endpoint} did not answer in time: cannot {what} "
            f"{where} (after {w.attempts} attempts)"
        )
    if isinstance(exc, _UNREACHABLE):
        return RepoError(
            f"S3 endpoint {w.endpoint} is unreachable: cannot {what} {where} "
            f"(after {w.attempts} attempts)"
        )
    if isinstance(exc, _bx.BotoCoreError):
        return RepoError(f"cannot {what} {at}: {short(exc)}")
    if isinstance(exc, OSError):
        if exc.errno in fsio.NO_SPACE_ERRNOS:
            return NoSpaceError(f"no space in the spool folder {w.spool_dir}")
        return RepoError(f"cannot {what} {at}: {exc.strerror or exc}")
    return RepoError(f"cannot {what} {at}: {short(exc)}")


def short(exc: BaseException) -> str:
    """An exception's text on one line, bounded (SDK messages can be long)."""
    return " ".join(str(exc).split())[:300] or type(exc).__name__
