"""FSDP2 (``fully_shard``) units for a (relaxed) recursive model that keep its ties.

Conversion ties depths at leaf level: depth d's linears and norms are the *same module objects* as those of the
first depth of its shared position. FSDP2 refuses a parameter that two groups manage (accelerate#4171), so the usual
one-unit-per-layer plan fails on a recursive model (depth d + K's layer holds depth d's leaves), and one unit for
the whole model gathers every parameter at once. Here, bottom-up:

1. every leaf shared by several depths is a unit of its own: depths d, d + K, ... call the same unit, so they
   all-gather the same shard, and its gradient (reduce-scattered after each call) accumulates into one sharded
   gradient;
2. every decoder layer is a unit of what is left in it (a relaxed depth's own adapters; a whole layer of an
   untied model);
3. the base model is the root unit (embeddings, final norm), and the LM head joins it: the chunked loss reads the
   head's weight outside any forward, and a root-group parameter stays unsharded from the root's forward to the
   end of the backward.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from rrt.recursive.model import RecursiveModel

HEAD_ALIAS = "rrt_lm_head"  # the LM head's second name, inside the base model (root unit), while sharded


def _holds_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def shared_leaves(model: nn.Module) -> list[nn.Module]:
    """Parameter-holding modules that more than one decoder layer runs, each once, deepest first.

    Deepest first because a shared linear sits inside each depth's adapter wrapper: the linear must be a unit
    before anything above it is.
    """
    users: dict[int, set[int]] = {}
    leaves: dict[int, tuple[int, nn.Module]] = {}
    for depth, layer in enumerate(RecursiveModel(model).layers):
        for path, module in layer.named_modules():
            if path and _holds_params(module):
                users.setdefault(id(module), set()).add(depth)
                leaves.setdefault(id(module), (path.count("."), module))
    shared = [leaves[key] for key, depths in users.items() if len(depths) > 1]
    return [module for _, module in sorted(shared, key=lambda item: -item[0])]


def units(model: nn.Module) -> Iterator[nn.Module]:
    """The modules :func:`shard` makes units of, in order, except the root."""
    yield from shared_leaves(model)
    tied = {id(p) for leaf in shared_leaves(model) for p in leaf.parameters()}
    for layer in RecursiveModel(model).layers:
        if any(id(p) not in tied for p in layer.parameters()):
            yield layer


def shard(
    model: nn.Module,
    mesh: DeviceMesh,
    mp_policy: MixedPrecisionPolicy | None = None,
    reshard_after_forward: bool = True,
) -> None:
    """Shard ``model`` in place over the 1-D ``mesh``; ties survive (one unit per shared leaf)."""
    options = {"mesh": mesh, "mp_policy": mp_policy or MixedPrecisionPolicy()}
    for unit in list(units(model)):
        fully_shard(unit, reshard_after_forward=reshard_after_forward, **options)
    model.base_model.add_module(HEAD_ALIAS, model.get_output_embeddings())
    fully_shard(model.base_model, **options)


def unalias_head(model: nn.Module) -> None:
    """Drop the head's second name, so state-dict keys are the unsharded model's again."""
    model.base_model._modules.pop(HEAD_ALIAS, None)


def fsdp_units(model: nn.Module) -> list[FSDPModule]:
    """Every FSDP unit of ``model`` (each once)."""
    seen: dict[int, FSDPModule] = {}
    for module in model.modules():
        if isinstance(module, FSDPModule):
            seen.setdefault(id(module), module)
    return list(seen.values())


def dtype_of(name: str | None) -> torch.dtype | None:
    """``"bfloat16"`` -> ``torch.bfloat16``; None stays None (FSDP keeps the parameters' dtype)."""
    return None if name is None else getattr(torch, name)
