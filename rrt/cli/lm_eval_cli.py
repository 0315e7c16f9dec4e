"""`rrt-lm-eval`: lm-eval's own CLI, with the `rrt` model registered and rrt's offline copies of the paper's tasks.

Every argument goes to lm-eval unchanged (`rrt-lm-eval --model rrt --model_args pretrained=<dir> --tasks piqa`).
Without ``--include_path``, the paper's tasks named in ``--tasks`` read rrt's local splits (as ``eval.py`` does),
so they run offline; other tasks are lm-eval's own.
"""

from __future__ import annotations

import argparse
import sys

from rrt.cli.errors import one_line_errors


def requested_tasks(argv: list[str]) -> list[str] | None:
    """The task names of ``--tasks``/``-t`` (space or comma separated); None when ``--include_path`` is given."""
    cli = argparse.ArgumentParser(add_help=False)
    cli.add_argument("--tasks", "-t", nargs="+", default=[])
    cli.add_argument("--include_path")
    known, _ = cli.parse_known_args(argv)
    if known.include_path is not None:
        return None
    return [name for value in known.tasks for name in value.split(",") if name]


def with_local_tasks(argv: list[str]) -> list[str]:
    """``argv`` plus ``--include_path`` to the local mirrors of the paper's tasks it asks for (if any)."""
    from rrt.evaluation.tasks import GROUP, PAPER_TASKS, task_dir

    names = requested_tasks(argv) or []
    local = list(PAPER_TASKS) if GROUP in names else [name for name in names if name in PAPER_TASKS]
    return [*argv, "--include_path", str(task_dir(local))] if local else argv


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    from lm_eval.__main__ import cli_evaluate

    import rrt.evaluation.lm  # noqa: F401  (registers the `rrt` model with lm-eval)

    argv = sys.argv[1:] if argv is None else argv
    sys.argv = ["rrt-lm-eval", *with_local_tasks(argv)]
    cli_evaluate()


if __name__ == "__main__":
    main()
