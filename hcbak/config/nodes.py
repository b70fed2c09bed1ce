"""Reading values from PyYAML's node tree, each error located at its node's line.

The config parser (parser.py) walks the sections; this is what it reads them with."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from hcbak.config.validation import did_you_mean
from hcbak.errors import ConfigError
from hcbak.schedule import parse_duration

T = TypeVar("T")
Node = yaml.Node
_CONSTRUCTOR = yaml.SafeLoader("")


class NodeReader:
    """Typed reads of YAML nodes; every error carries the file and the node's line."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, node: Node | None, where: str, what: str, hint: str | None = None) -> None:
        line = node.start_mark.line + 1 if node is not None else None
        raise ConfigError(f"{where}: {what}", path=str(self.path), line=line, hint=hint)

    # -- scalars ----------------------------------------------------------------------
    def mapping(self, node: Node, where: str, allowed: tuple[str, ...] | None) -> dict[str, Node]:
        if not isinstance(node, yaml.MappingNode):
            self.error(node, where, "must be a mapping (key: value lines)")
        assert isinstance(node, yaml.MappingNode)
        out: dict[str, Node] = {}
        for key, value in node.value:
            name = self.scalar_key(key, where)
            if allowed is not None and name not in allowed:
                self.error(
                    key,
                    f"{where}.{name}" if where != "config" else name,
                    "unknown key",
                    did_you_mean(name, allowed) or f"allowed: {', '.join(allowed)}",
                )
            if name in out:
                self.error(key, f"{where}.{name}", "key given twice")
            out[name] = value
        return out

    def scalar_key(self, key: Node, where: str) -> str:
        if not isinstance(key, yaml.ScalarNode):
            self.error(key, where, "keys must be plain strings")
        return str(key.value)

    def require(self, m: dict[str, Node], key: str, parent: Node, where: str) -> Node:
        if key not in m or is_null(m[key]):
            self.error(m.get(key, parent), f"{where}.{key}", "is required")
        return m[key]

    def value(self, node: Node) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            return node
        return _CONSTRUCTOR.construct_object(node)

    def string(self, node: Node, where: str) -> str:
        # The scalar's source text, not its YAML 1.1 value: `password: 0123` is the
        # string "0123", not the octal number 83, and `username: yes` is not a bool.
        if not isinstance(node, yaml.ScalarNode) or is_null(node):
            self.error(node, where, "must be a string")
        text = str(node.value)
        if not text.strip():
            self.error(node, where, "must not be empty")
        return text

    def string_list(self, node: Node, where: str) -> list[str]:
        if is_null(node):
            return []
        if isinstance(node, yaml.ScalarNode):
            return [self.string(node, where)]
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, where, "must be a list")
        return [self.string(item, where) for item in seq_items(node)]

    def integer(
        self, node: Node, where: str, *, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        value = self.value(node)
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(node, where, f"must be a whole number, not {_show(value)}")
        if minimum is not None and value < minimum:
            self.error(node, where, f"must be >= {minimum}, not {value}")
        if maximum is not None and value > maximum:
            self.error(node, where, f"must be <= {maximum}, not {value}")
        return int(value)

    def number(self, node: Node, where: str, *, allow_zero: bool = False) -> float:
        value = self.value(node)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.error(node, where, f"must be a number of seconds, not {_show(value)}")
        if value < 0 or (value == 0 and not allow_zero):
            self.error(node, where, f"must be {'>= 0' if allow_zero else '> 0'}, not {value}")
        return float(value)

    def boolean(self, node: Node, where: str) -> bool:
        value = self.value(node)
        if not isinstance(value, bool):
            self.error(node, where, f"must be true or false, not {_show(value)}")
        return bool(value)

    def choice(self, node: Node, where: str, choices: tuple[str, ...]) -> str:
        value = self.string(node, where)
        if value not in choices:
            self.error(
                node,
                where,
                f"{value!r} is not one of {', '.join(choices)}",
                did_you_mean(value, choices),
            )
        return value

    def duration(self, node: Node, where: str) -> str:
        text = self.string(node, where)
        self.check(node, where, parse_duration, text)
        return text

    def check(self, node: Node, where: str, fn: Callable[[Any], T], arg: Any) -> T:
        """Run a value validator; its ValueError becomes a located ConfigError."""
        try:
            return fn(arg)
        except ValueError as exc:
            self.error(node, where, str(exc))
            raise  # pragma: no cover - error() always raises


def seq_items(node: Node) -> list[Node]:
    return list(node.value) if isinstance(node, yaml.SequenceNode) else [node]


def is_null(node: Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _show(value: Any) -> str:
    return "a list or mapping" if isinstance(value, yaml.Node) else repr(value)
