"""Where an S3 repository lives, and its credentials, as text: pure parsing, no boto3.

The config, the CLI and `open_repo` need to recognise and check an S3 location without
importing boto3 (a local run must not pay its ~0.3 s import), so this module stays free
of I/O and of the SDK; hcbak/repo/storage/s3.py does the talking.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

SCHEME = "s3://"
# S3's bucket naming rules (the strict, DNS-compatible set every provider accepts).
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IP_RE = re.compile(r"^\d+\.\d+\.\d+\.\d+$")


@dataclass(frozen=True)
class S3Target:
    """A bucket and a key prefix inside it ("" or "a/b": no leading or trailing "/")."""

    bucket: str
    prefix: str = ""

    @property
    def location(self) -> str:
        """`s3://bucket/prefix`: how messages, locks and `open_repo` name it."""
        return f"{SCHEME}{self.bucket}/{self.prefix}" if self.prefix else f"{SCHEME}{self.bucket}"

    def key(self, name: str) -> str:
        """The S3 key of a repository object name (`packs/ab/...`)."""
        return f"{self.prefix}/{name}" if self.prefix else name

    def name(self, key: str) -> str:
        """The repository object name of an S3 key under this prefix."""
        return key[len(self.prefix) + 1 :] if self.prefix else key


def is_s3_location(text: str) -> bool:
    return text.startswith(SCHEME)


def parse_s3_target(text: str) -> S3Target:
    """`BUCKET`, `BUCKET/PREFIX` or `s3://BUCKET/PREFIX`; ValueError says what is wrong."""
    rest = text.removeprefix(SCHEME)
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET_RE.match(bucket) or ".." in bucket or _IP_RE.match(bucket):
        raise ValueError(
            f"{bucket!r} is not an S3 bucket name (3-63 characters: lowercase letters, "
            "digits, '.', '-'; starting and ending with a letter or digit)"
        )
    prefix = prefix.strip("/")
    parts = prefix.split("/") if prefix else []
    if any(part in ("", ".", "..") or part.startswith(".") for part in parts):
        raise ValueError(f"{prefix!r} is not a usable key prefix (empty or dot parts)")
    if len(prefix) > 512 or any(ord(c) < 32 for c in prefix):
        raise ValueError(f"{prefix!r} is not a usable key prefix (too long or control chars)")
    return S3Target(bucket, prefix)


@dataclass(frozen=True, repr=False)
class S3Keys:
    """An access key (and session token) resolved from a secret reference. repr hides
    everything but the key id's first characters."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def __repr__(self) -> str:
        return f"S3Keys({self.access_key_id[:4]}…)"


def parse_keys(text: str) -> S3Keys:
    """A credentials secret's text: `KEY_ID:SECRET`, the two on two lines, or the JSON
    of `aws configure export-credentials --format process` (with a session token).
    The ValueError never quotes the text (it is a secret)."""
    text = text.strip()
    if text.startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError:
            raise ValueError("the S3 credentials are not valid JSON") from None
        if not isinstance(doc, dict):
            raise ValueError("the S3 credentials JSON is not an object")
        key_id, secret = doc.get("AccessKeyId"), doc.get("SecretAccessKey")
        token = doc.get("SessionToken")
        if not isinstance(key_id, str) or not isinstance(secret, str) or not key_id or not secret:
            raise ValueError("the S3 credentials JSON lacks AccessKeyId or SecretAccessKey")
        return S3Keys(key_id, secret, token if isinstance(token, str) and token else None)
    for sep in ("\n", ":"):
        if sep in text:
            key_id, _, secret = text.partition(sep)
            key_id, secret = key_id.strip(), secret.strip()
            if key_id and secret and not any(c.isspace() for c in key_id + secret):
                return S3Keys(key_id, secret)
    raise ValueError(
        "the S3 credentials are not ACCESS_KEY_ID:SECRET_ACCESS_KEY, two lines, "
        "or `aws configure export-credentials` JSON"
    )
