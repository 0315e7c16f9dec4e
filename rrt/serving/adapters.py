"""A relaxed model's rows at different loops in one call: the depths' LoRAs of a shared linear stacked into one.

The paper serves relaxed models this way (§3.8, App. K): "multiple LoRAs are concatenated into one large LoRA"
so samples at different loops run in parallel. ``StackedLoRA`` holds the shared linear W' and every depth's
(down, up) pair of one layer position concatenated along the rank; a row at loop b keeps only its own depth's
rank block (the others are masked to zero), so y = W' x + B_b A_b x exactly, with the shared weight read once
per call instead of once per loop present. The price is the redundant low-rank work of the masked blocks,
which the paper notes hurts at short contexts; ``DepthStack(adapters="grouped")`` runs one call per loop
instead (benchmarks/serving.py measures both).

The stacked factors are copies taken at a stack's first mixed-loop step: an engine serves the adapters its
model had then.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from rrt.recursive.convert import parameter_leaves, replace_submodule
from rrt.recursive.relax import DepthLoRALinear

ADAPTER_CALLS = ("stacked", "grouped")


class RowLoops:
    """The loop (0-based) of every row of the current call, shared by the ``StackedLoRA`` modules of one layer."""

    def __init__(self) -> None:
        self.loops: torch.Tensor | None = None


class StackedLoRA(nn.Module):
    """The shared linear plus each loop's adapter, applied per row by the row's loop."""

    def __init__(self, adapters: Sequence[DepthLoRALinear], rows: RowLoops):
        super().__init__()
        self.base, self.rows = adapters[0].base, rows
        pairs = [a.factors() for a in adapters]
        self.register_buffer("down", torch.cat([down for down, _ in pairs]).detach().clone(), persistent=False)
        self.register_buffer("up", torch.cat([up for _, up in pairs], dim=1).detach().clone(), persistent=False)
        loop_of_rank = [torch.full((down.shape[0],), b) for b, (down, _) in enumerate(pairs)]
        self.register_buffer("loop_of_rank", torch.cat(loop_of_rank).to(self.down.device), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        own = (self.loop_of_rank == self.rows.loops[:, None]).to(x.dtype)  # [rows, total rank]
        low = F.linear(x, self.down) * own.view(own.shape[0], *([1] * (x.dim() - 2)), own.shape[1])
        return self.base(x) + F.linear(low, self.up)


def shared_but_adapters(layers: Sequence[nn.Module]) -> bool:
    """Whether the layers share every parameter leaf except their depth adapters (a relaxed model's loops)."""

    def key(layer: nn.Module) -> tuple[int, ...]:
        return tuple(id(m) for _, m in parameter_leaves(layer) if not isinstance(m, DepthLoRALinear))

    return len({key(layer) for layer in layers}) == 1 and any(
        isinstance(m, DepthLoRALinear) for m in layers[0].modules()
    )


def stacked_layer(layers: Sequence[nn.Module]) -> tuple[nn.Module, RowLoops]:
    """One module running ``layers`` (loop b's layer at index b) on rows at any loops: a copy of the first layer
    that shares its weights, its depth adapters replaced by ``StackedLoRA`` over all the layers' adapters."""
    first = layers[0]
    shared = {id(t): t for t in itertools.chain(first.parameters(), first.buffers())}
    stacked = copy.deepcopy(first, shared)  # new modules, the same parameter tensors
    rows = RowLoops()
    for path, module in first.named_modules():
        if isinstance(module, DepthLoRALinear):
            replace_submodule(stacked, path, StackedLoRA([layer.get_submodule(path) for layer in layers], rows))
    return stacked, rows
