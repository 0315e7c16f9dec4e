"""Index rules of the paper (rrt-paper.md section 1.2), as pure functions of (L, B, looping)."""

from __future__ import annotations

import numpy as np


def position_of_depth(depth: int, num_layers: int, loops: int, looping: str) -> int:
    """Shared-layer position executed at effective depth ``depth`` (0-indexed).

    cycle (Eq. 2): (depth mod K); sequence: depth // B (1,1,2,2,...).
    """
    k = num_layers // loops
    return depth % k if looping == "cycle" else depth // loops


def depths_of_position(position: int, num_layers: int, loops: int, looping: str) -> list[int]:
    """All effective depths that execute shared position ``position``; the first one owns the modules."""
    return [d for d in range(num_layers) if position_of_depth(d, num_layers, loops, looping) == position]


def stepwise_sources(num_layers: int, num_shared: int) -> list[int]:
    """round-half-even(linspace(0, L-1, K)): keeps first and last layer (Fig. 2: 6 -> 3 gives 0, 2, 5)."""
    return [int(round(float(x))) for x in np.linspace(0, num_layers - 1, num_shared)]


def source_layers(init: str, position: int, num_layers: int, loops: int, looping: str) -> list[int]:
    """Original layers whose weights initialise shared position ``position`` (averaged when several)."""
    k = num_layers // loops
    if init == "stepwise":
        return [stepwise_sources(num_layers, k)[position]]
    if init == "lower":
        return [position]
    if init == "upper":
        return [num_layers - k + position]
    if init == "average":
        return depths_of_position(position, num_layers, loops, looping)
    if init == "random":
        return depths_of_position(position, num_layers, loops, looping)[:1]
    raise ValueError(f"unknown init {init!r}")
