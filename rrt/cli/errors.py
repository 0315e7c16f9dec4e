"""One error policy for every entry point: a user's mistake is one line and exit code 2; a bug keeps its traceback.

``RRT_DEBUG=1`` shows the traceback of a user error too. A run that diverged is reported the same way with exit
code 1 (its record already says ``failed`` and why).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import TypeVar

from rrt.assets import MissingAssetError
from rrt.errors import UserError

F = TypeVar("F", bound=Callable)
# ValueError: spec and config validation predate UserError and still raise it for bad values.
USER_ERRORS = (UserError, ValueError, FileNotFoundError, PermissionError, MissingAssetError)
log = logging.getLogger("rrt")


def exit_code(error: BaseException) -> int | None:
    """2 for a user error, 1 for a diverged run, None for anything else (a bug: keep the traceback)."""
    from rrt.training.module import TrainingDiverged  # imported late: `--help` should not load Lightning

    if isinstance(error, USER_ERRORS):
        return 2
    return 1 if isinstance(error, TrainingDiverged) else None


def one_line_errors(main: F) -> F:
    """Wrap an entry point (inside ``@hydra.main``) with the policy above."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except Exception as error:
            code = exit_code(error)
            if code is None or os.environ.get("RRT_DEBUG"):
                raise
            log.error("%s", error)
            print(f"error: {error}", file=sys.stderr)
            sys.exit(code)

    return wrapper  # type: ignore[return-value]
