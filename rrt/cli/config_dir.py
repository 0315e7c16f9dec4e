"""Where the Hydra entry points (train, eval, convert, serve) find their config groups; a helper, not an entry point."""

from __future__ import annotations

from pathlib import Path

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")
