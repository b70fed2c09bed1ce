"""CLI test fixtures (see helpers.py)."""

from .helpers import base_config, config_path, run_inproc

__all__ = ["base_config", "config_path", "run_inproc"]
