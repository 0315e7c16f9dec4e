"""Exit trajectories, teacher-forced over text (the paper's App. K method): for every token, the earliest
loop whose argmax equals the final loop's argmax (oracle exit), and each loop's top-1 probability (what a
confidence policy would see)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from rrt.recursive.model import RecursiveModel
from rrt.serving.stack import DepthStack


@dataclass
class Trajectory:
    """One document: ``oracle[t]`` is the oracle exit loop (1..B) of the prediction at position t;
    ``confidence[b-1, t]`` the top-1 probability and ``agrees[b-1, t]`` whether loop b's argmax equals the
    final one, for b = 1..B-1."""

    oracle: torch.Tensor
    confidence: torch.Tensor
    agrees: torch.Tensor


def exit_trajectories(model: nn.Module, tokenizer, documents: Iterable[str], max_tokens: int = 256) -> list[Trajectory]:
    stack = DepthStack(model)
    trajectories = []
    with torch.inference_mode():
        for document in documents:
            ids = tokenizer(document, return_tensors="pt").input_ids[:, :max_tokens]
            with RecursiveModel(model).loop_outputs() as captured:
                final = model(input_ids=ids, use_cache=False).logits[0].argmax(-1)
            oracle = torch.full_like(final, stack.loops)
            confidence, agrees = [], []
            for hidden in captured:
                probs = torch.softmax(stack.logits(hidden[0]).float(), dim=-1)
                top, argmax = probs.max(-1)
                confidence.append(top)
                agrees.append(argmax == final)
            for b in range(stack.loops - 1, 0, -1):
                oracle = torch.where(agrees[b - 1], b, oracle)
            empty = torch.empty(0, final.numel())
            trajectories.append(
                Trajectory(
                    oracle,
                    torch.stack(confidence) if confidence else empty,
                    torch.stack(agrees) if agrees else empty.bool(),
                )
            )
    return trajectories


def confidence_exits(trajectory: Trajectory, threshold: float) -> torch.Tensor:
    """Exit loop per token under a confidence threshold, teacher-forced (earliest loop with top-1 >= it)."""
    loops = trajectory.confidence.shape[0] + 1
    exits = torch.full(trajectory.oracle.shape, loops)
    for b in range(loops - 1, 0, -1):
        exits = torch.where(trajectory.confidence[b - 1] >= threshold, b, exits)
    return exits


def exit_summary(exit_loops: Sequence[torch.Tensor], loops: int) -> dict[str, float]:
    """Fraction of tokens exiting at each loop and the mean exit loop."""
    counts = Counter(torch.cat([e.flatten() for e in exit_loops]).tolist())
    total = sum(counts.values())
    out = {f"exit_frac_loop{b}": counts.get(b, 0) / total for b in range(1, loops + 1)}
    out["mean_exit_loop"] = sum(b * n for b, n in counts.items()) / total
    out["tokens"] = total
    return out


def agreement(trajectories: Sequence[Trajectory], exit_loops: Sequence[torch.Tensor]) -> float:
    """Fraction of tokens whose prediction at their exit loop equals the final loop's (1 for oracle exits)."""
    hits = total = 0
    for trajectory, exits in zip(trajectories, exit_loops):
        agree = torch.cat([trajectory.agrees, torch.ones_like(trajectory.oracle, dtype=torch.bool)[None]])
        hits += int(agree.gather(0, (exits - 1)[None]).sum())
        total += exits.numel()
    return hits / total
