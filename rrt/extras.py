"""Optional dependencies: rrt's core trains and evaluates without them; each feature that needs one says which extra.

wandb, submitit, matplotlib and gguf are heavy or cluster-specific, so they are extras (``pip install 'rrt[wandb]'``)
rather than requirements, and rrt installs next to a lab's own stack. A feature that needs a missing one fails with
one line naming the extra (a :class:`MissingExtraError`, which the CLIs print with exit code 2), not a traceback
from deep inside Lightning or Hydra.
"""

from __future__ import annotations

import importlib.util

from rrt.errors import UserError

# modules whose distribution is named otherwise (the name a user would pip install)
DISTRIBUTIONS = {"hydra_plugins.hydra_submitit_launcher": "hydra-submitit-launcher"}


class MissingExtraError(UserError):
    """A feature needs an optional dependency that is not installed; the message names the extra."""


def installed(module: str) -> bool:
    """Whether ``module`` can be imported, found without importing it (wandb alone takes seconds to import)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module blocked with sys.modules[name] = None
        return False


def missing_extra(names: list[str], extra: str, feature: str, instead: str = "") -> MissingExtraError:
    """The one-line error for a feature whose modules ``names`` are not installed."""
    shown = [DISTRIBUTIONS.get(name, name) for name in names]
    return MissingExtraError(
        f"{feature} needs {' and '.join(shown)}, which {'is' if len(shown) == 1 else 'are'} not "
        f"installed: pip install 'rrt[{extra}]'" + (f" (or {instead})" if instead else "")
    )


def require(modules: str | tuple[str, ...], extra: str, feature: str, instead: str = "") -> None:
    """Raise :class:`MissingExtraError` unless every module is installed; ``instead`` offers a way around it."""
    names = (modules,) if isinstance(modules, str) else modules
    missing = [name for name in names if not installed(name)]
    if missing:
        raise missing_extra(missing, extra, feature, instead)
