"""Where the config file and hcbak's state live: environment, then config, then defaults."""

from __future__ import annotations

import os
from pathlib import Path

from hcbak.config.model import Config


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def default_config_path() -> Path:
    """$HCBAK_CONFIG, else /etc/hcbak/config.yaml for root, else the user config dir."""
    env = os.environ.get("HCBAK_CONFIG")
    if env:
        return Path(env).expanduser()
    if _is_root():
        return Path("/etc/hcbak/config.yaml")
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "hcbak" / "config.yaml"


def state_dir(config: Config | None = None) -> Path:
    """$HCBAK_STATE_DIR, else config `state_dir`, else /var/lib/hcbak (root) or XDG state."""
    env = os.environ.get("HCBAK_STATE_DIR")
    if env:
        return Path(env).expanduser()
    if config is not None and config.state_dir:
        return Path(config.state_dir).expanduser()
    if _is_root():
        return Path("/var/lib/hcbak")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "hcbak"
