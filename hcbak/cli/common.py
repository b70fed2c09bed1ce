"""Helpers every command module shares: loading/saving the config with global options."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hcbak.cli.context import OPTIONS

if TYPE_CHECKING:
    from hcbak.config import Config


def load_config() -> Config:
    """Load the config named by --config / $HCBAK_CONFIG / the default path."""
    from hcbak.config import load_config as _load

    return _load(OPTIONS.config_path)
