"""Exit decisions after a non-final loop: never, by confidence, or replayed oracle trajectories."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


class ExitPolicy:
    """Decides, for rows that just finished a loop < B, which leave now. Subclasses set ``needs_logits`` when
    the decision reads the intermediate head output (which then also costs a head call)."""

    name = "none"
    needs_logits = False

    def exits(
        self, loops: Sequence[int], logits: torch.Tensor | None, requests: Sequence[int], steps: Sequence[int]
    ) -> list[bool]:
        """Per row: loops completed (1-based), head logits (if ``needs_logits``), request id, and the index of
        the token it is producing."""
        return [False] * len(requests)

    def describe(self) -> str:
        return self.name


class FullDepth(ExitPolicy):
    """Every token runs all B loops (no early exit)."""


class ConfidenceExit(ExitPolicy):
    """Exit when the top-1 probability after the loop reaches ``threshold`` (the realistic serving policy)."""

    name = "confidence"
    needs_logits = True

    def __init__(self, threshold: float):
        self.threshold = threshold

    def exits(self, loops, logits, requests, steps):
        top = torch.softmax(logits.float(), dim=-1).amax(dim=-1)
        return (top >= self.threshold).tolist()

    def describe(self) -> str:
        return f"confidence>={self.threshold:g}"


class OracleExit(ExitPolicy):
    """Replays oracle exit loops: token ``k`` of request ``r`` exits after ``schedule[r][k]`` loops.

    The schedule comes from :func:`rrt.serving.trajectories.exit_trajectories` (teacher-forced over text, the
    paper's method): the engine then realises the exit pattern the paper simulated, with real compute.
    Tokens beyond a request's schedule run all loops.
    """

    name = "oracle"

    def __init__(self, schedule: Mapping[int, Sequence[int]]):
        self.schedule = schedule

    def exits(self, loops, logits, requests, steps):
        def planned(r: int, k: int) -> int | None:
            plan = self.schedule.get(r, ())
            return plan[k] if k < len(plan) else None

        return [planned(r, k) is not None and planned(r, k) <= b for b, r, k in zip(loops, requests, steps)]
