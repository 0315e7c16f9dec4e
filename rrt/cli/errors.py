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

from rrt.cache import MissingAssetError
from rrt.errors import UserError

F = TypeVar("F", bound=Callable)
# Missing or unreadable files raise the built-in types (callers match on them); everything else a user can fix is a
# UserError, so that a ValueError from a bug keeps its traceback.
USER_ERRORS = (UserError, FileNotFoundError, PermissionError, MissingAssetError)
log = logging.getLogger("rrt")


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
        try:
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
