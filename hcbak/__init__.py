"""hcbak: open, scriptable VM backup for Scale Computing SC//HyperCore clusters."""

from hcbak import codecache

__version__ = "0.1.0"

codecache.install()  # before any module of ours defines a dataclass
