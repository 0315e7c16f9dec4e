"""One error policy for every entry point: a user's mistake is one line and exit code 2; a bug keeps its traceback.

``RRT_DEBUG=1`` shows the traceback of a user error too. A run that diverged is reported the same way with exit
code 1 (its record already says ``failed`` and why).

Two layers, because Hydra composes the config before it calls the task function::

    @compose_errors                      # Hydra's own errors while composing (a wrong type, an unknown key or
    @hydra.main(...)                     #   option, an override that does not parse): one line, exit 2
    @one_line_errors                     # everything the task raises (and keys no schema has: +lora.rnak=8)
    def main(cfg): ...
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import TypeVar

from omegaconf.errors import OmegaConfBaseException

from rrt.cache import MissingAssetError
from rrt.conf.schema import compose_error_line
from rrt.errors import UserError

F = TypeVar("F", bound=Callable)
# Missing or unreadable files raise the built-in types (callers match on them); everything else a user can fix is a
# UserError, so that a ValueError from a bug keeps its traceback.
USER_ERRORS = (UserError, FileNotFoundError, PermissionError, MissingAssetError)
log = logging.getLogger("rrt")
_task = {"started": False}  # set when Hydra has composed the config and called the task function


def exit_code(error: BaseException) -> int | None:
    """2 for a user error, 1 for a diverged run, 128 + signal for an interrupted one, None for anything else (a
    bug: keep the traceback)."""
    from rrt.training.interrupt import RunInterrupted  # imported late: `--help` should not load Lightning
    from rrt.training.module import TrainingDiverged

    if isinstance(error, USER_ERRORS):
        return 2
    if isinstance(error, RunInterrupted):
        return 128 + error.signum
    return 1 if isinstance(error, TrainingDiverged) else None


def one_line_errors(main: F) -> F:
    """Wrap an entry point (inside ``@hydra.main``) with the policy above."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        _task["started"] = True
        try:
            from rrt.conf.schema import check_keys

            if args and hasattr(args[0], "keys"):
                check_keys(args[0])
            return main(*args, **kwargs)
        except KeyboardInterrupt as error:  # before or after the training loop (inside it: RunInterrupted)
            print(f"interrupted ({error or 'SIGINT'})", file=sys.stderr)
            sys.exit(143 if str(error) == "SIGTERM" else 130)
        except Exception as error:
            code = exit_code(error)
            if code is None or os.environ.get("RRT_DEBUG"):
                raise
            log.error("%s", error)
            print(f"error: {error}", file=sys.stderr)
            sys.exit(code)

    return wrapper  # type: ignore[return-value]


def compose_errors(main: F) -> F:
    """Wrap a ``@hydra.main`` entry point: an error while Hydra composes the config is one line, exit code 2.

    Hydra prints such an error over several lines and exits 1 unless ``HYDRA_FULL_ERROR`` is set, in which case it
    raises it; it is set for the call so that the error reaches this wrapper (a bug in the task keeps its traceback).
    """
    from hydra.errors import HydraException

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        _task["started"] = False
        previous = os.environ.get("HYDRA_FULL_ERROR")
        os.environ["HYDRA_FULL_ERROR"] = "1"
        try:
            return main(*args, **kwargs)
        except (HydraException, OmegaConfBaseException) as error:
            if _task["started"] or os.environ.get("RRT_DEBUG"):
                raise
            print(f"error: {compose_error_line(error)}", file=sys.stderr)
            sys.exit(2)
        finally:
            if previous is None:
                os.environ.pop("HYDRA_FULL_ERROR", None)
            else:
                os.environ["HYDRA_FULL_ERROR"] = previous

    return wrapper  # type: ignore[return-value]
