"""Exit decisions after a non-final loop: never, by confidence, by a learned exit head, or a replayed exit pattern."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from rrt.serving.trajectories import per_loop_thresholds

if TYPE_CHECKING:
    from rrt.serving.exit_head import ExitHead


class ExitPolicy:
    """Decides, for rows that just finished a loop < B, which leave now. Subclasses set ``needs_logits`` when
    the decision reads the intermediate head output (which then also costs a head call), ``needs_hidden`` when
    it reads the final-normed hidden states after and before the loop."""

    name = "none"
    needs_logits = False
    needs_hidden = False

    def exits(
        self,
        loops: Sequence[int],
        logits: torch.Tensor | None,
        requests: Sequence[int],
        steps: Sequence[int],
        hidden: torch.Tensor | None = None,
        previous: torch.Tensor | None = None,
    ) -> list[bool]:
        """Per row: loops completed (1-based), head logits (if ``needs_logits``), request id, the index of the
        token it is producing, and (if ``needs_hidden``) its final-normed hidden state after the loop and before it
        (the loop's input: the previous loop's output, or the token's embedding for loop 1)."""
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

    def exits(self, loops, logits, requests, steps, hidden=None, previous=None):
        top = torch.softmax(logits.float(), dim=-1).amax(dim=-1)
        return (top >= self.threshold).tolist()

    def describe(self) -> str:
        return f"confidence>={self.threshold:g}"


class LearnedExit(ExitPolicy):
    """Exit when the exit head's probability that this loop agrees with the last reaches the loop's threshold (by
    default those calibrated when the head was fitted; ``threshold``: one for every loop). Live: it reads only the
    loop's hidden state, so it costs one small MLP per row and no LM-head call for the tokens that stay."""

    name = "learned"
    needs_hidden = True

    def __init__(self, head: ExitHead, threshold: float | None = None):
        self.head = head
        self.thresholds = head.thresholds if threshold is None else per_loop_thresholds(threshold, head.loops)

    def exits(self, loops, logits, requests, steps, hidden=None, previous=None):
        scores = self.head.scores(hidden, list(loops), previous)
        bars = torch.tensor([self.thresholds[b - 1] for b in loops], device=scores.device)
        return (scores >= bars).tolist()

    def describe(self) -> str:
        return "learned>=" + "/".join(f"{t:.3g}" for t in self.thresholds)


class ReplayExit(ExitPolicy):
    """Replays a teacher-forced exit pattern: token ``k`` of request ``r`` exits after ``schedule[r][k]`` loops.

    The schedule comes from :mod:`rrt.serving.trajectories` (teacher-forced over the requests' documents, the
    paper's method): the engine then realises the exit pattern the paper simulated, with real compute. It sets
    where tokens exit, not what they are: the generated text drifts from the document, so this is a replay of the
    pattern, not a policy that could run live. Tokens beyond a request's schedule run all loops. ``label`` names
    the pattern (``oracle``: the earliest loop agreeing with the final one).
    """

    name = "replay"

    def __init__(self, schedule: Mapping[int, Sequence[int]], label: str = "oracle"):
        self.schedule, self.label = schedule, label

    def describe(self) -> str:
        return f"replay({self.label})"

    def exits(self, loops, logits, requests, steps, hidden=None, previous=None):
        def planned(r: int, k: int) -> int | None:
            plan = self.schedule.get(r, ())
            return plan[k] if k < len(plan) else None

        return [planned(r, k) is not None and planned(r, k) <= b for b, r, k in zip(loops, requests, steps)]
