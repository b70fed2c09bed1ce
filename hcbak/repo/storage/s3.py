"""The S3 backend: a repository in a bucket (AWS S3, Ceph RGW, MinIO, Wasabi, B2).

The same objects as a folder repository, one S3 object per key under an optional
prefix (docs/format.md, "S3 repositories"). What makes it as safe as the folder:

- Atomic, durable writes: S3 shows an object only once its PutObject (or multipart
  completion) is acknowledged, and then in full. A point's manifest is put only after
  every pack and index segment it needs was acknowledged (repository commit order).
- Write-once names and lock creation: ONE PutObject with `If-None-Match: *` (412 when
  the key exists). Never a multipart upload: Ceph Pacific ignores the condition on
  CompleteMultipartUpload and would overwrite.
- Packs (20-64 MiB) are spooled to a local temp file while they fill, then uploaded in
  parts of PART_SIZE by a pool of `upload_parallel` threads that each read their part
  from the file: memory stays at about upload_parallel x PART_SIZE whatever the pack.
  Every body carries Content-MD5, so the server refuses bytes damaged on the way.
- Every request has bounded connect/read timeouts and is retried with exponential
  backoff on 5xx, throttling and dropped connections (botocore's "standard" mode);
  what still fails becomes a one-line hcbak error naming the location.

boto3 is imported only here, and this module only when an S3 repository is opened.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import tempfile
import threading
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from hcbak.config.s3_target import S3Keys, S3Target
from hcbak.errors import (
    HcbakError,
    RepoError,
    RepoLocationError,
    SecretError,
)
from hcbak.repo import fsio
from hcbak.repo.storage.base import ObjectMissingError, Spool
from hcbak.repo.storage.locked import LockedObjects
from hcbak.repo.storage.s3_errors import What, describe_s3_error, short
from hcbak.repo.storage.s3_locked import free_deleted

MiB = 1024 * 1024
PART_SIZE = 8 * MiB  # S3's minimum is 5 MiB; a 64 MiB pack goes up in 8 parts
SINGLE_PUT_MAX = PART_SIZE  # spooled objects up to one part go up in one PutObject
DEFAULT_UPLOAD_PARALLEL = 4
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
# botocore "standard" retries: attempts include the first; backoff min(2^n * rand, 20 s)
MAX_ATTEMPTS = 5
SPOOL_PREFIX = ".hcbak-spool-"
LEASES = "locks/"
# Retention is set this much beyond what a point needs, so a daily backup extends
# each pack it shares with older points about once a week, not every day.
RETENTION_SLACK = timedelta(days=7)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# `--debug` puts the root logger at DEBUG: botocore would then log every request's
# parameters, pack bodies included. Its retries and failures reach hcbak as errors.
for _name in ("boto3", "botocore", "s3transfer"):
    logging.getLogger(_name).setLevel(logging.WARNING)


@dataclass(frozen=True)
class S3Options:
    """How to reach the bucket. `keys` None: boto3's own chain (AWS_* environment,
    AWS_PROFILE / `profile`, ~/.aws files, instance roles)."""

    endpoint: str | None = None
    region: str | None = None
    keys: S3Keys | None = None
    profile: str | None = None
    upload_parallel: int = DEFAULT_UPLOAD_PARALLEL
    connect_timeout: float = CONNECT_TIMEOUT
    read_timeout: float = READ_TIMEOUT
    max_attempts: int = MAX_ATTEMPTS
    spool_dir: Path | None = None  # where packs are spooled; default: the temp dir
    # Object Lock (`immutable_days`): every object but leases is written with this
    # retention; `protect` extends what a new point needs. Mode: COMPLIANCE/GOVERNANCE.
    immutable_days: int = 0
    immutable_mode: str = "COMPLIANCE"


class S3Store:
    """An ObjectStore on an S3 bucket and prefix (see the module docstring)."""

    def __init__(self, target: S3Target, options: S3Options | None = None) -> None:
        self.target = target
        self.options = options or S3Options()
        self.location = target.location
        self.local_root: Path | None = None
        self.endpoint_name = self.options.endpoint or "AWS S3"
        self.bucket = target.bucket
        self.spool_dir = Path(self.options.spool_dir or tempfile.gettempdir())
        # spool files of this repository (remove_temp finds a crashed writer's by it)
        tag = hashlib.sha256(f"{self.endpoint_name} {self.location}".encode()).hexdigest()
        self._spool_tag = f"{SPOOL_PREFIX}{tag[:12]}-"
        self._client = self._make_client()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self.immutable_days = self.options.immutable_days
        self._protected: dict[str, datetime] = {}  # key -> retention known to hcbak

    def __repr__(self) -> str:
        return f"S3Store({self.location!r}, endpoint={self.endpoint_name!r})"

    def _make_client(self) -> Any:
        opts = self.options
        config = botocore.config.Config(
            connect_timeout=opts.connect_timeout,
            read_timeout=opts.read_timeout,
            retries={"total_max_attempts": max(1, opts.max_attempts), "mode": "standard"},
            max_pool_connections=max(10, opts.upload_parallel + 6),
            tcp_keepalive=True,
            user_agent_extra="hcbak",
            # Content-MD5 is sent instead: servers (Ceph Pacific) that predate the
            # flexible checksums neither check nor keep them.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"addressing_style": "path"} if opts.endpoint else None,
        )
        keys = opts.keys
        try:
            session = boto3.session.Session(
                profile_name=opts.profile,
                aws_access_key_id=keys.access_key_id if keys else None,
                aws_secret_access_key=keys.secret_access_key if keys else None,
                aws_session_token=keys.session_token if keys else None,
            )
            return session.client(
                "s3", endpoint_url=opts.endpoint, region_name=opts.region, config=config
            )
        except botocore.exceptions.ProfileNotFound:
            raise SecretError(f"AWS profile {opts.profile!r} is not configured (~/.aws/config)")
        except (botocore.exceptions.BotoCoreError, ValueError) as exc:
            raise RepoError(f"cannot use S3 endpoint {self.endpoint_name}: {short(exc)}")

    # --- errors ---------------------------------------------------------------------------
    def _error(self, exc: Exception, what: str, key: str | None = None) -> HcbakError:
        """The hcbak error for a boto3/botocore failure: one line, naming the location."""
        return describe_s3_error(
            exc,
            What(what, self.location, key, self.endpoint_name, self.bucket,
                 self.options.max_attempts, self.spool_dir),
        )  # fmt: skip

    def _call(self, what: str, key: str | None, method: str, **kwargs: Any) -> Any:
        try:
            return getattr(self._client, method)(Bucket=self.bucket, **kwargs)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._error(exc, what, key) from exc

    # --- reading --------------------------------------------------------------------------
    def get(self, key: str) -> bytes:
        return self._read(key, {})

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        try:
            return self._read(key, {"Range": f"bytes={offset}-{offset + length - 1}"})
        except RepoError as exc:
            if "InvalidRange" in exc.message:  # starts at or past the end
                return b""
            raise

    def _read(self, key: str, extra: dict[str, str]) -> bytes:
        response = self._call("read", key, "get_object", Key=self.target.key(key), **extra)
        try:
            data: bytes = response["Body"].read()
        except (botocore.exceptions.BotoCoreError, OSError) as exc:
            raise self._error(exc, "read", key) from exc
        expected = response.get("ContentLength")
        if expected is not None and len(data) != expected:
            raise RepoError(
                f"cannot read {self.location}/{key}: the connection ended after "
                f"{len(data)} of {expected} bytes"
            )
        return data

    def size(self, key: str) -> int | None:
        try:
            response = self._client.head_object(Bucket=self.bucket, Key=self.target.key(key))
        except botocore.exceptions.ClientError as exc:
            error = self._error(exc, "look up", key)
            if isinstance(error, ObjectMissingError):
                return None
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 403:
                # a HEAD answer has no body, so no error code: a listing names it
                # (InvalidAccessKeyId, SignatureDoesNotMatch, AccessDenied...)
                prefix = self.target.key(key)
                self._call("look up", key, "list_objects_v2", Prefix=prefix, MaxKeys=1)
            raise error from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise self._error(exc, "look up", key) from exc
        return int(response["ContentLength"])

    def list(self, prefix: str) -> Iterator[str]:
        return (name for name, _size in self.list_sizes(prefix))

    def list_sizes(self, prefix: str) -> Iterator[tuple[str, int]]:
        full = self.target.key(prefix)  # "" -> "PREFIX/": never a sibling prefix's keys
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                for item in page.get("Contents", []):
                    name = self.target.name(item["Key"])
                    if not any(part.startswith(".") for part in name.split("/")):
                        yield name, int(item["Size"])
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._error(exc, "list", prefix or None) from exc

    # --- writing --------------------------------------------------------------------------
    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> bool:
        kwargs: dict[str, Any] = {"Key": self.target.key(key), "Body": data}
        kwargs["ContentMD5"] = _md5_b64(data)  # also what Object Lock requires of a PUT
        kwargs.update(self._retention_args(key))
        if if_absent:
            kwargs["IfNoneMatch"] = "*"
        for _ in range(3):
            try:
                self._client.put_object(Bucket=self.bucket, **kwargs)
                return True
            except botocore.exceptions.ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code", ""))
                if if_absent and code == "PreconditionFailed":
                    retried = exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0)
                    # A retried put whose first attempt landed (its answer lost) finds
                    # its own bytes: that write was ours.
                    return bool(retried) and self._holds(key, data)
                if if_absent and code == "ConditionalRequestConflict":
                    continue  # a concurrent conditional write on this key: ask again
                raise self._error(exc, "write", key) from exc
            except botocore.exceptions.BotoCoreError as exc:
                raise self._error(exc, "write", key) from exc
        raise RepoError(f"cannot write {self.location}/{key}: conditional writes keep conflicting")

    def replace(self, key: str, old: bytes, new: bytes) -> bool:
        """Compare and swap: write `new` only while the object still holds `old` (a
        lease renewal must never recreate a lease another host removed, nor overwrite
        one it replaced). GET, then a PutObject with `If-Match` on that GET's ETag;
        False when the object is gone or different. The ETag goes without its quotes:
        Ceph RGW matches only that form (AWS and MinIO take both)."""
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self.target.key(key))
            current = response["Body"].read()
        except botocore.exceptions.ClientError as exc:
            error = self._error(exc, "read", key)
            if isinstance(error, ObjectMissingError):
                return False
            raise error from exc
        except (botocore.exceptions.BotoCoreError, OSError) as exc:
            raise self._error(exc, "read", key) from exc
        if current != old:
            return False
        try:
            self._client.put_object(
                Bucket=self.bucket,
                Key=self.target.key(key),
                Body=new,
                ContentMD5=_md5_b64(new),
                IfMatch=str(response["ETag"]).strip('"'),
                **self._retention_args(key),
            )
        except botocore.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("PreconditionFailed", "NoSuchKey", "ConditionalRequestConflict"):
                retried = exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0)
                return bool(retried) and self._holds(key, new)  # our first attempt landed
            raise self._error(exc, "write", key) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise self._error(exc, "write", key) from exc
        return True

    def _holds(self, key: str, data: bytes) -> bool:
        try:
            return self.get(key) == data
        except ObjectMissingError:
            return False

    def delete(self, key: str) -> None:
        self._call("delete", key, "delete_object", Key=self.target.key(key))

    def spool(self, prefix: str) -> Spool:
        try:
            fsio.make_private_dir(self.spool_dir, parents=True)
            return Spool(self.spool_dir / f"{self._spool_tag}{uuid.uuid4().hex}")
        except OSError as exc:
            raise self._error(exc, "spool", prefix) from exc

    def commit_spool(self, spool: Spool, key: str) -> bool:
        """Upload the spooled file as `key` (write-once: an existing key, same bytes by
        its content address, is kept). One PutObject up to SINGLE_PUT_MAX, else a
        multipart upload in parallel parts; the local file is removed either way."""
        try:
            try:
                spool.close(sync=False)  # the bucket, not this disk, is where it must last
            except OSError as exc:
                raise self._error(exc, "spool", key) from exc
            if self.size(key) is not None:
                return False
            if spool.size <= SINGLE_PUT_MAX:
                try:
                    data = spool.path.read_bytes()
                except OSError as exc:
                    raise self._error(exc, "spool", key) from exc
                self.put(key, data)
            else:
                self._multipart(spool.path, spool.size, key)
            return True
        finally:
            fsio.remove_quietly(spool.path)

    def _parts_pool(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=max(1, self.options.upload_parallel),
                    thread_name_prefix="hcbak-s3-part",
                )
            return self._pool

    def _multipart(self, path: Path, size: int, key: str) -> None:
        s3_key = self.target.key(key)
        upload = self._call(
            "upload", key, "create_multipart_upload", Key=s3_key, **self._retention_args(key)
        )
        upload_id = upload["UploadId"]
        futures: list[Future[dict[str, Any]]] = []
        try:
            pool = self._parts_pool()
            for number, offset in enumerate(range(0, size, PART_SIZE), start=1):
                length = min(PART_SIZE, size - offset)
                futures.append(
                    pool.submit(self._upload_part, path, key, upload_id, number, offset, length)
                )
            parts = [future.result() for future in futures]
            self._call(
                "upload",
                key,
                "complete_multipart_upload",
                Key=s3_key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            for future in futures:
                future.cancel()
            for future in futures:
                try:
                    future.exception()  # wait: no part may land after the abort
                except BaseException:
                    pass
            try:
                self._client.abort_multipart_upload(
                    Bucket=self.bucket, Key=s3_key, UploadId=upload_id
                )
            except Exception:
                pass  # remove_temp (prune) or a lifecycle rule ends it later
            raise

    def _upload_part(
        self, path: Path, key: str, upload_id: str, number: int, offset: int, length: int
    ) -> dict[str, Any]:
        try:
            with open(path, "rb") as fh:
                fh.seek(offset)
                data = fh.read(length)
        except OSError as exc:
            raise self._error(exc, "spool", key) from exc
        if len(data) != length:
            raise RepoError(f"spool file {path} ended early ({len(data)} of {length} bytes)")
        response = self._call(
            "upload",
            key,
            "upload_part",
            Key=self.target.key(key),
            UploadId=upload_id,
            PartNumber=number,
            Body=data,
            ContentMD5=_md5_b64(data),
        )
        return {"ETag": response["ETag"], "PartNumber": number}

    # --- Object Lock ------------------------------------------------------------------------
    def retention_until(self) -> datetime:
        """The retention a point committed now must have on every object it needs."""
        return datetime.now(UTC) + timedelta(days=self.immutable_days)

    def _retention_args(self, key: str) -> dict[str, Any]:
        if not self.immutable_days or key.startswith(LEASES):
            return {}  # leases must go away with their holder
        until = self.retention_until() + RETENTION_SLACK
        self._protected[key] = until
        return {"ObjectLockMode": self.options.immutable_mode, "ObjectLockRetainUntilDate": until}

    def retained_until(self, key: str) -> datetime | None:
        """The object's Object Lock retention, None without one (or when missing)."""
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=self.target.key(key))
        except botocore.exceptions.ClientError as exc:
            if isinstance(self._error(exc, "look up", key), ObjectMissingError):
                return None
            raise self._error(exc, "look up", key) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise self._error(exc, "look up", key) from exc
        until = head.get("ObjectLockRetainUntilDate")
        return until if isinstance(until, datetime) else None

    def protect(self, keys: Iterable[str], until: datetime) -> int:
        """Extend the retention of `keys` to at least `until` (a new point's packs that
        older points wrote, the config): never shortened, and extended by a slack of
        RETENTION_SLACK so daily points do not extend every pack every day. Returns how
        many objects were extended."""
        todo = [key for key in dict.fromkeys(keys) if self._protected.get(key, _EPOCH) < until]
        if not todo:
            return 0
        extended = sum(self._parts_pool().map(lambda k: self._extend(k, until), todo))
        return int(extended)

    def _extend(self, key: str, until: datetime) -> bool:
        current = self.retained_until(key)
        if current is not None and current >= until:
            self._protected[key] = current
            return False
        new_until = until + RETENTION_SLACK
        self._call(
            "protect",
            key,
            "put_object_retention",
            Key=self.target.key(key),
            Retention={"Mode": self.options.immutable_mode, "RetainUntilDate": new_until},
        )
        self._protected[key] = new_until
        return True

    def free_deleted(self) -> LockedObjects:
        """Free the versions of deleted objects that Object Lock no longer holds; report
        those it still does (s3_locked.py)."""
        return free_deleted(self._client, self.bucket, self.target, self._error)

    def check_object_lock(self) -> None:
        """A bucket without Object Lock cannot keep the promise of `immutable_days`."""
        try:
            answer = self._client.get_object_lock_configuration(Bucket=self.bucket)
        except botocore.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code == "ObjectLockConfigurationNotFoundError":
                answer = {}
            else:
                raise self._error(exc, "check Object Lock of") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise self._error(exc, "check Object Lock of") from exc
        enabled = answer.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled")
        if enabled != "Enabled":
            raise RepoLocationError(
                f"bucket {self.bucket} does not have Object Lock enabled, so "
                f"immutable_days cannot be kept",
                hint="create a bucket with Object Lock (most servers cannot switch it on "
                "later), or drop --immutable-days",
            )

    # --- housekeeping ---------------------------------------------------------------------
    def remove_temp(self) -> int:
        """Abort unfinished multipart uploads under the prefix (a killed writer's) and
        remove this repository's spool files left in the spool folder."""
        removed = 0
        prefix = f"{self.target.prefix}/" if self.target.prefix else ""
        paginator = self._client.get_paginator("list_multipart_uploads")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for upload in page.get("Uploads", []):
                    self._call(
                        "clean up",
                        upload["Key"],
                        "abort_multipart_upload",
                        Key=upload["Key"],
                        UploadId=upload["UploadId"],
                    )
                    removed += 1
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._error(exc, "clean up") from exc
        try:
            leftovers = [p for p in self.spool_dir.iterdir() if p.name.startswith(self._spool_tag)]
        except OSError:
            leftovers = []
        for path in leftovers:
            fsio.remove_quietly(path)
            removed += 1
        return removed

    def create(self) -> None:
        """A new repository needs an existing bucket and nothing under the prefix."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except botocore.exceptions.ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404:
                raise RepoLocationError(
                    f"bucket {self.bucket} does not exist at {self.endpoint_name}",
                    hint="create it first (with Object Lock if you want immutable points)",
                ) from exc
            raise self._error(exc, "open") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise self._error(exc, "open") from exc
        if self.immutable_days:
            self.check_object_lock()
        if self.size("config") is not None:
            raise RepoLocationError(f"{self.location} is already an hcbak repository")
        for _ in self.list(""):
            raise RepoLocationError(
                f"{self.location} is not empty and is not an hcbak repository",
                hint="choose an empty bucket or a new prefix (--s3 BUCKET/PREFIX)",
            )

    def close(self) -> None:
        """Stop the part uploaders (no upload is under way when a repository closes)."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)


def _md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
