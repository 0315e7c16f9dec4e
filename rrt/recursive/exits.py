"""Early exits of a CYCLE-looped model: the output after loop b is final_norm + head on depth b*K.

Static exit (evaluation, serving) truncates the depth list for the duration of a ``with`` block, so the
model runs only b*K layers. Training with exit losses needs every loop's hidden state from one forward:
:func:`capture_loop_outputs` records them with forward hooks at the loop boundaries.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from rrt.errors import UserError
from rrt.models import family_for
from rrt.recursive.convert import recursion_spec_of, replace_submodule


def exit_depth(model: nn.Module, loop: int) -> int:
    """Number of layers run when exiting after ``loop`` (1-based); validates the request."""
    spec = recursion_spec_of(model)
    loops = spec.loops if spec else 1
    if not 1 <= loop <= loops:
        raise UserError(f"exit_loop={loop} is outside 1..{loops} (the model loops {loops} times)")
    if spec and spec.looping != "cycle" and loop != loops:
        raise UserError(f"early exit needs looping=cycle; this model uses looping={spec.looping}")
    num_layers = len(family_for(model.config).layer_list(model))
    return num_layers // loops * loop


@contextmanager
def exit_after_loop(model: nn.Module, loop: int | None) -> Iterator[nn.Module]:
    """Run ``model`` as if it had only the first ``loop`` loops (None: all of them)."""
    if loop is None:
        yield model
        return
    family = family_for(model.config)
    layers = family.layer_list(model)
    depth = exit_depth(model, loop)
    if depth == len(layers):
        yield model
        return
    replace_submodule(model, family.layers, nn.ModuleList(list(layers)[:depth]))
    try:
        yield model
    finally:
        replace_submodule(model, family.layers, layers)


@contextmanager
def capture_loop_outputs(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the (pre-final-norm) hidden state after each loop but the last, in loop order."""
    spec = recursion_spec_of(model)
    loops = spec.loops if spec else 1
    layers = family_for(model.config).layer_list(model)
    captured: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        captured.append(output[0] if isinstance(output, tuple) else output)

    handles = [layers[exit_depth(model, b) - 1].register_forward_hook(hook) for b in range(1, loops)]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def final_norm(model: nn.Module) -> nn.Module:
    return family_for(model.config).final_norm_module(model)
