"""The answers `hcbak init` accepts, as pure functions: presets, parsing, command lines.

Each parser turns one typed answer into what the matching command-line flags take,
or raises ValueError with the reason, which the wizard prints before asking again.
Nothing here prints, prompts or touches the network, so every rule is tested alone
(tests/cli/test_init_choices.py).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from hcbak.config import RETENTION_KEYS, validate_email, validate_name, validate_node
from hcbak.schedule import CronSchedule, parse_duration
from hcbak.secrets import SecretRef


@dataclass(frozen=True)
class Preset:
    """A numbered choice; `value` is what the flags get."""

    label: str
    value: Any


# The commercial plug-in's default (and a common GFS rotation): two weeks of dailies,
# two months of weeklies, a year of monthlies.
RETENTION_PRESETS = (
    Preset("14 daily, 8 weekly, 12 monthly", {"keep_daily": 14, "keep_weekly": 8,
                                              "keep_monthly": 12}),
    Preset("7 daily, 4 weekly", {"keep_daily": 7, "keep_weekly": 4}),
    Preset("the 30 newest points", {"keep_last": 30}),
    Preset("keep every point (prune by hand)", {}),
)  # fmt: skip
SCHEDULE_PRESETS = (
    Preset("every day at 01:00", "0 1 * * *"),
    Preset("every 6 hours", "0 */6 * * *"),
    Preset("every Sunday at 02:00", "0 2 * * 0"),
    Preset("no schedule (run it by hand)", None),
)

SECRET_KINDS = ("env", "file", "cmd")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# --- answers ----------------------------------------------------------------------------
def parse_secret_source(answer: str) -> SecretRef:
    """`env:VAR`, `file:PATH` or `cmd:COMMAND` -> a reference (never the secret itself)."""
    kind, sep, rest = answer.strip().partition(":")
    rest = rest.strip()
    if not sep or kind not in SECRET_KINDS:
        raise ValueError(
            "give env:VARIABLE, file:PATH or cmd:COMMAND (a typed secret would sit in the "
            "config and in the commands printed for scripts)"
        )
    if not rest:
        raise ValueError(f"{kind}: needs a value after the colon")
    if kind == "env" and not _ENV_NAME.match(rest):
        raise ValueError(f"{rest!r} is not an environment variable name")
    if kind == "env":
        return SecretRef(env=rest)
    return SecretRef(file=rest) if kind == "file" else SecretRef(command=rest)


def secret_flags(what: str, ref: SecretRef) -> list[str]:
    """The `--password-env VAR` style flags for a reference."""
    if ref.env:
        return [f"--{what}-env", ref.env]
    if ref.file:
        return [f"--{what}-file", ref.file]
    if ref.command:
        return [f"--{what}-command", ref.command]
    raise ValueError("an inline secret has no flag: it is never put on a command line")


def parse_name(answer: str, kind: str, taken: Iterable[str] = ()) -> str:
    name = validate_name(answer.strip(), kind)
    if name in set(taken):
        raise ValueError(f"{kind} {name!r} is already in the config; choose another name")
    return name


def parse_nodes(answer: str) -> list[str]:
    """Comma- or space-separated node addresses, each checked, none twice."""
    nodes = [validate_node(item) for item in split_list(answer)]
    if not nodes:
        raise ValueError("give at least one node address")
    if len(set(nodes)) != len(nodes):
        raise ValueError("the same address is given twice")
    return nodes


def parse_email(answer: str) -> str:
    return validate_email(answer.strip())


def parse_choice(answer: str, options: Sequence[str]) -> str:
    value = answer.strip().lower()
    if value not in options:
        raise ValueError(f"{answer.strip()!r} is not one of {', '.join(options)}")
    return value


def parse_port(answer: str) -> int:
    try:
        port = int(answer.strip())
    except ValueError:
        raise ValueError(f"{answer.strip()!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is not between 1 and 65535")
    return port


def split_list(answer: str) -> list[str]:
    return [item for item in re.split(r"[,\s]+", answer.strip()) if item]


# --- the job (step 5) -------------------------------------------------------------------
@dataclass(frozen=True)
class Selection:
    vms: list[str]
    tags: list[str]


def parse_selection(answer: str, vm_tags: dict[str, list[str]]) -> Selection:
    """`web01, db01, tag:nightly` against the live cluster's VM names and their tags."""
    vms: list[str] = []
    tags: list[str] = []
    all_tags = {t for ts in vm_tags.values() for t in ts}
    for item in split_list(answer):
        if item.startswith("tag:"):
            tag = item.removeprefix("tag:")
            if tag not in all_tags:
                known = ", ".join(sorted(all_tags)) or "none"
                raise ValueError(f"no VM has the tag {tag!r} (tags on the cluster: {known})")
            tags.append(tag)
        elif item not in vm_tags:
            raise ValueError(f"no VM named {item!r} on the cluster (names are case-sensitive)")
        else:
            vms.append(item)
    if not vms and not tags:
        raise ValueError("choose at least one VM name or tag:TAG")
    return Selection(list(dict.fromkeys(vms)), list(dict.fromkeys(tags)))


def selected_names(selection: Selection, vm_tags: dict[str, list[str]]) -> list[str]:
    """The VM names a selection covers today (names, then VMs holding a tag)."""
    names = list(selection.vms)
    names += [n for n, ts in vm_tags.items() if set(ts) & set(selection.tags) and n not in names]
    return names


def parse_exclusions(answer: str, selected: Sequence[str]) -> list[str]:
    names = split_list(answer)
    for name in names:
        if name not in selected:
            raise ValueError(f"{name!r} is not among the selected VMs ({', '.join(selected)})")
    if names and set(names) >= set(selected):
        raise ValueError("that leaves no VM to back up")
    return list(dict.fromkeys(names))


def parse_preset(answer: str, presets: Sequence[Preset]) -> Preset | None:
    """A preset by its number (1-based); None when the answer is not a number."""
    text = answer.strip()
    if not text.isdigit():
        return None
    index = int(text)
    if not 1 <= index <= len(presets):
        raise ValueError(f"choose a number from 1 to {len(presets)}")
    return presets[index - 1]


def parse_retention(answer: str) -> dict[str, Any]:
    """A preset number, or `daily=14 weekly=8 last=3 within=2d` (keys as --keep-*)."""
    preset = parse_preset(answer, RETENTION_PRESETS)
    if preset is not None:
        return dict(preset.value)
    keep: dict[str, Any] = {}
    short = [k.removeprefix("keep_") for k in RETENTION_KEYS]
    for item in split_list(answer):
        key, sep, value = item.partition("=")
        if not sep or key not in short:
            raise ValueError(
                f"{item!r}: give a preset number or KEY=VALUE with KEY one of {', '.join(short)}"
            )
        if key == "within":
            parse_duration(value)
            keep["keep_within"] = value
        elif not value.isdigit():
            raise ValueError(f"{key}={value}: a count of points (0 or more)")
        else:
            keep[f"keep_{key}"] = int(value)
    if not keep:
        raise ValueError("give a preset number or KEY=VALUE pairs")
    return keep


def parse_schedule(answer: str) -> str | None:
    """A preset number or a cron expression ("0 1 * * *"); None: no schedule."""
    preset = parse_preset(answer, SCHEDULE_PRESETS)
    if preset is not None:
        return str(preset.value) if preset.value is not None else None
    text = " ".join(answer.split())
    try:
        CronSchedule.parse(text)
    except ValueError as exc:
        raise ValueError(f"not a preset number nor a cron expression: {exc}") from None
    return text


def retention_flags(keep: dict[str, Any]) -> list[str]:
    flags: list[str] = []
    for key in RETENTION_KEYS:
        if keep.get(key) is not None:
            flags += [f"--{key.replace('_', '-')}", str(keep[key])]
    return flags


# --- the cluster (step 2) ---------------------------------------------------------------
def discovered_addresses(first: str, records: Sequence[dict[str, Any]]) -> list[str]:
    """Node addresses from the first node's `GET /Node` records, the first node first.

    A record's `lanIP` is the address; the simulator's nodes all share 127.0.0.1 and
    carry their port as `simPort` (docs/simulator.md). A first address given with a
    port keeps that port for its peers (a cluster behind port forwarding)."""
    _, sep, port = first.rpartition(":") if first.count(":") == 1 else ("", "", "")
    found = [first]
    for record in records:
        ip = str(record.get("lanIP") or "")
        if not ip:
            continue
        if record.get("simPort"):
            address = f"{ip}:{record['simPort']}"
        else:
            address = f"{ip}:{port}" if sep else ip
        if address not in found:
            found.append(address)
    return found


# --- printing ---------------------------------------------------------------------------
def command_line(argv: Sequence[str]) -> str:
    """The shell line a script would type for `hcbak ARGV`."""
    return shlex.join(["hcbak", *argv])


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
