"""rrt's Hydra configs, shipped inside the package: an installed rrt (a wheel, not only a checkout) composes them.

Every entry point names them as ``CONFIG_PATH`` (Hydra's ``pkg://`` source: found by import, wherever rrt is
installed); ``CONF_DIR`` is the same directory on disk, for code that reads a yaml file itself.

A machine's own overrides (``optional local: default`` in ``config.yaml``) are not part of the package: they live in
``local/default.yaml`` under the user config dir, ``$RRT_CONFIG_DIR`` or else ``~/.config/rrt``
(``$XDG_CONFIG_HOME/rrt`` when that is set); ``hydra_plugins/rrt_searchpath`` puts that dir on rrt's search path.

The groups' typed schemas (``rrt/conf/schema.py``) are registered with Hydra's ConfigStore on import.
"""

from __future__ import annotations

import os
from pathlib import Path

from rrt.conf.schema import register

CONFIG_PATH = "pkg://rrt.conf"
CONF_DIR = Path(__file__).resolve().parent


def user_config_dir() -> Path:
    """Where a machine's own overrides live (``local/default.yaml`` under it); it need not exist."""
    if os.environ.get("RRT_CONFIG_DIR"):
        return Path(os.environ["RRT_CONFIG_DIR"]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base).expanduser() / "rrt"


register()
