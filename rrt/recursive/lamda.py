"""LaMDA's progressive PMB freeze: after which optimizer step each column of B stops training.

The paper's Figure 1 caption says PMB "gradually freezes based on the singular values. After t_i iterations, PMB
is completely frozen"; it gives no formula (rrt-paper.md section 2.2), and the official code freezes at most
~1/eta columns by zeroing gradients. Our rule, with r the adapter's rank and ``t_i = floor(lora.lamda_freeze_b_at
x optimizer steps)``:

    column j of B (0-based; the j-th largest singular value) is updated by optimizer steps 1 .. floor((j+1) t_i / r)
    and by no step after.

So columns freeze one by one at evenly spaced steps, the largest singular value first (the official code also
freezes B's leading columns first, which with an SVD init are the largest components): the dominant directions
are the ones the SVD init already fits best, and the weaker ones keep adapting longest. The last column's final
update is step t_i, so after t_i steps B is completely frozen and only S trains; t_i = 0 freezes B from the start.
"""

from __future__ import annotations

import math

from torch import nn

from rrt.recursive.relax import DepthLaMDALinear


def freeze_end_step(fraction: float, total_steps: int) -> int:
    """t_i: the optimizer step after which every column of B is frozen."""
    return math.floor(fraction * total_steps)


def last_update_steps(rank: int, end_step: int) -> list[int]:
    """Per column of B, the last optimizer step (1-based) that may change it; 0 = frozen from the start."""
    return [(column + 1) * end_step // rank for column in range(rank)]


def pmb_schedules(model: nn.Module, end_step: int) -> list[tuple[nn.Parameter, list[int]]]:
    """Every LaMDA adapter's B with its columns' last update steps (each adapter once, in module order)."""
    adapters = {id(m): m for m in model.modules() if isinstance(m, DepthLaMDALinear)}
    return [(m.lora_B, last_update_steps(m.rank, end_step)) for m in adapters.values()]
