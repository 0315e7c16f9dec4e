"""Exit trajectories, teacher-forced over text (the paper's App. K method): for every token, the earliest
loop whose argmax equals the final loop's argmax (oracle exit), each loop's top-1 probability (what a
confidence policy would see) and, given an exit head, its agreement score (what the learned policy sees)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from rrt.errors import UserError
from rrt.recursive.model import RecursiveModel
from rrt.serving.stack import DepthStack


@dataclass
class Trajectory:
    """One document: ``oracle[t]`` is the oracle exit loop (1..B) of the prediction at position t;
    ``confidence[b-1, t]`` the top-1 probability, ``agrees[b-1, t]`` whether loop b's argmax equals the
    final one and ``exit_score[b-1, t]`` the exit head's probability of that (empty without a head), for
    b = 1..B-1."""

    oracle: torch.Tensor
    confidence: torch.Tensor
    agrees: torch.Tensor
    exit_score: torch.Tensor | None = None


def exit_trajectories(
    model: nn.Module,
    tokenizer,
    documents: Iterable[str],
    max_tokens: int = 256,
    exit_head: nn.Module | None = None,  # an rrt.serving.exit_head.ExitHead
) -> list[Trajectory]:
    """Trajectories over the first ``max_tokens`` tokens of each document."""
    windows = [torch.tensor(tokenizer(document).input_ids[:max_tokens]) for document in documents]
    return window_trajectories(model, windows, exit_head)


def window_trajectories(
    model: nn.Module, windows: Iterable[torch.Tensor], exit_head: nn.Module | None = None
) -> list[Trajectory]:
    """Trajectories over token windows (1-D id tensors), e.g. a serving workload's (``text_requests``)."""
    stack = DepthStack(model)
    trajectories = []
    with torch.inference_mode():
        for window in windows:
            ids = window[None]
            with RecursiveModel(model).loop_outputs() as captured:
                final = model(input_ids=ids, use_cache=False).logits[0].argmax(-1)
            oracle = torch.full_like(final, stack.loops)
            confidence, agrees, scores = [], [], []
            previous = stack.norm(stack.embed(ids)[0])  # loop 1's input, final-normed (an exit head may read it)
            for b, hidden in enumerate(captured, start=1):
                probs = torch.softmax(stack.logits(hidden[0]).float(), dim=-1)
                top, argmax = probs.max(-1)
                confidence.append(top)
                agrees.append(argmax == final)
                normed = stack.norm(hidden[0])
                if exit_head is not None:
                    scores.append(exit_head.scores(normed, [b] * len(normed), previous))
                previous = normed
            for b in range(stack.loops - 1, 0, -1):
                oracle = torch.where(agrees[b - 1], b, oracle)
            empty = torch.empty(0, final.numel())
            trajectories.append(
                Trajectory(
                    oracle,
                    torch.stack(confidence) if confidence else empty,
                    torch.stack(agrees) if agrees else empty.bool(),
                    torch.stack(scores) if scores else empty,
                )
            )
    return trajectories


def per_loop_thresholds(threshold: float | Sequence[float], loops: int) -> list[float]:
    """One threshold per non-final loop: ``threshold`` itself when it is one per loop, else it for every loop."""
    if isinstance(threshold, (int, float)):
        return [float(threshold)] * (loops - 1)
    if len(threshold) != loops - 1:
        raise UserError(f"{len(threshold)} exit thresholds for {loops - 1} non-final loop(s): give one per loop")
    return [float(t) for t in threshold]


def earliest_at(scores: torch.Tensor, threshold: float | Sequence[float]) -> torch.Tensor:
    """Exit loop per token from per-loop scores (B-1, N): the earliest loop b scoring >= its threshold (one for all
    loops, or one per non-final loop), else B."""
    loops = scores.shape[0] + 1
    thresholds = per_loop_thresholds(threshold, loops)
    exits = torch.full(scores.shape[1:], loops)
    for b in range(loops - 1, 0, -1):
        exits = torch.where(scores[b - 1] >= thresholds[b - 1], b, exits)
    return exits


def confidence_exits(trajectory: Trajectory, threshold: float) -> torch.Tensor:
    """Exit loop per token under a confidence threshold, teacher-forced (earliest loop with top-1 >= it)."""
    return earliest_at(trajectory.confidence, threshold)


def learned_exits(trajectory: Trajectory, threshold: float | Sequence[float]) -> torch.Tensor:
    """Exit loop per token under the exit head's threshold(s), teacher-forced."""
    if trajectory.exit_score is None or trajectory.exit_score.numel() != trajectory.confidence.numel():
        raise UserError("these trajectories have no exit-head scores: pass exit_head= to exit_trajectories")
    return earliest_at(trajectory.exit_score, threshold)


def exit_summary(exit_loops: Sequence[torch.Tensor], loops: int) -> dict[str, float]:
    """Fraction of tokens exiting at each loop and the mean exit loop."""
    counts = Counter(torch.cat([e.flatten() for e in exit_loops]).tolist())
    total = sum(counts.values())
    out = {f"exit_frac_loop{b}": counts.get(b, 0) / total for b in range(1, loops + 1)}
    out["mean_exit_loop"] = sum(b * n for b, n in counts.items()) / total
    out["tokens"] = total
    return out


def agreement_of(agrees: torch.Tensor, exits: torch.Tensor) -> float:
    """Share of tokens whose prediction at their exit loop equals the final loop's; ``agrees`` is (B-1, N)."""
    agree = torch.cat([agrees, torch.ones_like(exits, dtype=torch.bool)[None]])
    return float(agree.gather(0, (exits - 1)[None]).float().mean())


def agreement(trajectories: Sequence[Trajectory], exit_loops: Sequence[torch.Tensor]) -> float:
    """Fraction of tokens whose prediction at their exit loop equals the final loop's (1 for oracle exits)."""
    agrees = torch.cat([t.agrees for t in trajectories], dim=1)
    return agreement_of(agrees, torch.cat([e.flatten() for e in exit_loops]))
