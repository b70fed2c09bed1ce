"""hcbak: open, scriptable VM backup for Scale Computing SC//HyperCore clusters."""

__version__ = "0.1.0"
