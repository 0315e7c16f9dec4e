"""Hydra search-path plugin: a machine's own overrides for rrt's configs, outside the installed package.

``config.yaml`` ends its defaults with ``optional local: default``; this plugin appends the user config dir
(``rrt.conf.user_config_dir()``: ``$RRT_CONFIG_DIR`` or ``~/.config/rrt``) to the search path of rrt's own
entry points, so ``<that dir>/local/default.yaml`` is composed when it exists. Other Hydra apps are left alone.
"""

from __future__ import annotations

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

RRT_CONFIG_SOURCE = "pkg://rrt.conf"


class RRTUserConfigSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if not any(element.path == RRT_CONFIG_SOURCE for element in search_path.get_path()):
            return
        from rrt.conf import user_config_dir

        search_path.append(provider="rrt-user", path=f"file://{user_config_dir()}")
