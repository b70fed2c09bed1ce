"""Freeing what was deleted in an Object Lock bucket (versioned by force).

There a plain DELETE only adds a delete marker: the object's versions, locked or not,
keep their space. `free_deleted` finds every key under the prefix whose newest entry
is a delete marker, deletes its versions one by one (a locked one is refused with
AccessDenied: kept and reported with its retention date, never an error), and once no
version is left removes the markers too. Objects still visible are never touched, so
a version an attacker overwrote or hid stays recoverable until its retention ends.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import botocore.exceptions

from hcbak.config.s3_target import S3Target
from hcbak.errors import HcbakError
from hcbak.repo.storage.locked import LockedObjects

REFUSED = ("AccessDenied", "ObjectLocked", "InvalidRequest")


def free_deleted(
    client: Any,
    bucket: str,
    target: S3Target,
    error: Callable[[Exception, str, str | None], HcbakError],
) -> LockedObjects:
    report = LockedObjects()
    versions: dict[str, list[str]] = {}
    markers: dict[str, list[str]] = {}
    hidden: set[str] = set()
    try:
        pages = client.get_paginator("list_object_versions").paginate(
            Bucket=bucket, Prefix=target.key("")
        )
        for page in pages:
            for item in page.get("Versions", []):
                versions.setdefault(item["Key"], []).append(item["VersionId"])
            for item in page.get("DeleteMarkers", []):
                markers.setdefault(item["Key"], []).append(item["VersionId"])
                if item.get("IsLatest"):
                    hidden.add(item["Key"])
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise error(exc, "list the versions of", None) from exc
    for key in sorted(hidden):
        left = 0
        for version in versions.get(key, []):
            if _delete_version(client, bucket, key, version, target, error):
                report.freed += 1
            else:
                left += 1
                report.add(target.name(key), _retention(client, bucket, key, version))
        if left:
            continue
        for marker in markers.get(key, []):
            _delete_version(client, bucket, key, marker, target, error)
    return report


def _delete_version(
    client: Any,
    bucket: str,
    key: str,
    version: str,
    target: S3Target,
    error: Callable[[Exception, str, str | None], HcbakError],
) -> bool:
    """Delete one version; False when Object Lock refuses it."""
    try:
        client.delete_object(Bucket=bucket, Key=key, VersionId=version)
        return True
    except botocore.exceptions.ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code", "")) in REFUSED:
            return False
        raise error(exc, "delete", target.name(key)) from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise error(exc, "delete", target.name(key)) from exc


def _retention(client: Any, bucket: str, key: str, version: str) -> datetime | None:
    try:
        answer = client.get_object_retention(Bucket=bucket, Key=key, VersionId=version)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
        return None  # a legal hold, or a server without the call: locked, date unknown
    until = answer.get("Retention", {}).get("RetainUntilDate")
    return until if isinstance(until, datetime) else None
