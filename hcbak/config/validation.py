"""What a single config value may be: the validators the loader and the CLI share.

Each raises ValueError with a one-line reason; the parser turns it into a located
ConfigError, the CLI into a usage error. The allowed-value tables live here too.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
COMPRESSIONS = ("lz4", "zstd", "none")
NOTIFY_EVENTS = ("failure", "warning", "success")
SMTP_SECURITY = ("starttls", "ssl", "none")
PRUNE_MODES = ("after_run", "never")
MIN_BLOCK_SIZE = 256 * 1024
MAX_BLOCK_SIZE = 4 * 1024 * 1024
DEFAULT_BLOCK_SIZE = 1024 * 1024
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+$")


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


def parse_repo_id(text: str) -> str:
    """A repository id as `repo add` records it: 32 lowercase hex digits."""
    if len(text) != 32 or text.strip("0123456789abcdef"):
        raise ValueError(f"{text!r} is not a repository id (32 lowercase hex digits)")
    return text


def did_you_mean(word: str, candidates: Any) -> str | None:
    import difflib  # only a misspelt name needs it

    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else None


# --- S3 repositories -----------------------------------------------------------------
S3_KEYS = ("bucket", "prefix", "endpoint", "region", "profile", "upload_parallel",
           "credentials_env", "credentials_file", "credentials_command",
           "immutable_days", "immutable_mode")  # fmt: skip
MAX_UPLOAD_PARALLEL = 64
IMMUTABLE_MODES = ("compliance", "governance")
MAX_IMMUTABLE_DAYS = 36500


def parse_endpoint(value: object) -> str:
    """An S3 endpoint URL: http(s)://host[:port][/path]."""
    from urllib.parse import urlsplit

    text = str(value).strip() if isinstance(value, str) else ""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an endpoint URL (http://HOST:PORT or https://HOST)")
    if parts.username or parts.password or parts.query:
        raise ValueError("an endpoint URL takes no user, password or query (keys: credentials_*)")
    return text.rstrip("/")
