"""CLI test fixtures (see helpers.py)."""

from .helpers import base_config, config_path

__all__ = ["base_config", "config_path"]
