"""The recursive model as one object: a converted HF causal LM and the facts it answers about itself.

Conversion keeps the HF model (every architecture keeps working, ties are leaf-level; see ``convert.py``); this
facade is the one place that knows how to read it as a Recursive Transformer: how many loops and shared layers it
has, which depth a loop ends at, the final-normed hidden states, the logits (Gemma's final soft-capping is applied
here and nowhere else), a static exit after loop b, and every loop's output from one forward.

What still steers the HF model from outside, because HF's forward has no argument for it, lives only here:
``exit_after`` swaps the decoder-layer ``ModuleList`` for its first b*K layers for the duration of a ``with`` block,
and ``loop_outputs`` records the loop-boundary hidden states with forward hooks.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F

from rrt.errors import UserError
from rrt.models import FamilyAdapter, family_for
from rrt.recursive.convert import recursion_spec_of, replace_submodule
from rrt.recursive.spec import RecursionSpec


def soft_cap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """Gemma-style final logit soft-capping, ``cap * tanh(logits / cap)`` (no-op without a cap)."""
    return torch.tanh(logits / cap) * cap if cap else logits


class RecursiveModel:
    """A (converted or plain) HF causal LM read as a Recursive Transformer; a plain model loops once."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.family: FamilyAdapter = family_for(model.config)
        self.spec: RecursionSpec | None = recursion_spec_of(model)

    @property
    def loops(self) -> int:
        return self.spec.loops if self.spec else 1

    @property
    def layers(self) -> nn.ModuleList:
        return self.family.layer_list(self.model)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def shared(self) -> int:
        """K: the number of shared layers (the layers of one loop)."""
        return self.num_layers // self.loops

    @property
    def final_norm(self) -> nn.Module:
        return self.family.final_norm_module(self.model)

    @property
    def softcap(self) -> float | None:
        return getattr(self.model.config, "final_logit_softcapping", None)

    @property
    def head(self) -> torch.Tensor:
        """The LM head's weight (vocabulary x hidden)."""
        return self.model.get_output_embeddings().weight

    def exit_depth(self, loop: int) -> int:
        """Layers run when exiting after ``loop`` (1-based); a loop the model does not have is a user error."""
        if not 1 <= loop <= self.loops:
            raise UserError(f"exit_loop={loop} is outside 1..{self.loops} (the model loops {self.loops} times)")
        if self.spec and self.spec.looping != "cycle" and loop != self.loops:
            raise UserError(f"early exit needs looping=cycle; this model uses looping={self.spec.looping}")
        return self.shared * loop

    def final_hidden(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Final-normed hidden states (batch, tokens, hidden), without computing the LM head."""
        return self.model.base_model(input_ids=input_ids, use_cache=False).last_hidden_state

    def logits(self, hidden: torch.Tensor, head: torch.Tensor | None = None) -> torch.Tensor:
        """LM-head logits of final-normed ``hidden`` (``head``: e.g. one chunk's view of the head), soft-capped."""
        return soft_cap(F.linear(hidden, self.head if head is None else head), self.softcap)

    @contextmanager
    def exit_after(self, loop: int | None) -> Iterator[nn.Module]:
        """The HF model running only its first ``loop`` loops inside the block (None: all of them)."""
        if loop is None or self.exit_depth(loop) == self.num_layers:
            yield self.model
            return
        layers = self.layers
        replace_submodule(self.model, self.family.layers, nn.ModuleList(list(layers)[: self.exit_depth(loop)]))
        try:
            yield self.model
        finally:
            replace_submodule(self.model, self.family.layers, layers)

    @contextmanager
    def loop_outputs(self) -> Iterator[list[torch.Tensor]]:
        """Collect the (pre-final-norm) hidden state after each loop but the last, in loop order, during the block."""
        captured: list[torch.Tensor] = []

        def hook(_module, _inputs, output):
            captured.append(output[0] if isinstance(output, tuple) else output)

        layers = self.layers
        handles = [layers[self.exit_depth(b) - 1].register_forward_hook(hook) for b in range(1, self.loops)]
        try:
            yield captured
        finally:
            for handle in handles:
                handle.remove()

    def exit_hiddens(self, input_ids: torch.Tensor) -> list[torch.Tensor]:
        """Final-normed hidden states after every loop (the last is the model's output), from one forward."""
        if self.loops == 1:
            return [self.final_hidden(input_ids)]
        with self.loop_outputs() as captured:
            final = self.final_hidden(input_ids)
        return [self.final_norm(h) for h in captured] + [final]
