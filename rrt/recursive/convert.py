"""Convert a Hugging Face causal LM into a (Relaxed) Recursive Transformer, in place.

Tying works at the level of leaf modules: every depth keeps its own decoder-layer object (so its
``layer_idx`` gives it its own KV-cache slot, and Gemma 3 depths keep their own sliding/full attention
type), but the parameter-holding leaves (linears, norms) of depth ``d`` are replaced by the *same module
objects* as those of the first depth that runs the same shared position. Tied parameters are therefore one
``Parameter`` with one storage; ``model.parameters()`` counts them once, and ``.to()``, ``deepcopy`` and the
optimizer see one tensor.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch
from torch import nn

from rrt.models import FamilyAdapter, family_for
from rrt.models.family import fused_rank
from rrt.recursive.indices import depths_of_position, position_of_depth, source_layers
from rrt.recursive.relax import ADAPTER_CLASSES
from rrt.recursive.spec import RecursionSpec

log = logging.getLogger(__name__)


def parameter_leaves(layer: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(path, module) for each submodule of ``layer`` that holds parameters directly."""
    for path, module in layer.named_modules():
        if path and any(True for _ in module.parameters(recurse=False)):
            yield path, module


def replace_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent_path) if parent_path else root, name, module)


def requested_rank(spec: RecursionSpec, family: FamilyAdapter, path: str, linear: nn.Linear) -> int:
    """Rank asked for one linear: its group's rank; for a fused linear, the rank that honours each part's group."""
    if path in family.fused:
        parts = tuple(spec.lora.rank_for(group) for group in family.fused[path])
        return fused_rank(parts, linear.in_features, linear.out_features)
    return spec.lora.rank_for(family.linears[path])


def reinitialize(model: nn.Module, seed: int) -> None:
    """Give every parameter and buffer of ``model`` a fresh, seeded initialisation, in place.

    ``model.apply(model._init_weights)`` is not enough: transformers 5.x flags every tensor loaded by
    ``from_pretrained`` as initialised and its init functions then skip it, so a loaded model would keep
    its pretrained weights. A ``from_config`` model of the same architecture is initialised for real; its
    values are copied in place, so the caller's ``Parameter`` objects (and any ties) stay the same.
    """
    torch.manual_seed(seed)
    dtype = next(model.parameters()).dtype
    fresh = type(model)._from_config(model.config, dtype=dtype)
    with torch.no_grad():
        model.load_state_dict(fresh.state_dict())


def _shared_values(layers: nn.ModuleList, family: FamilyAdapter, spec: RecursionSpec) -> dict[tuple[int, str, str], torch.Tensor]:
    """New value of every parameter of every shared position, computed before any layer is overwritten."""
    num_layers, loops = len(layers), spec.loops
    values = {}
    for position in range(num_layers // loops):
        owner = depths_of_position(position, num_layers, loops, spec.looping)[0]
        sources = source_layers(spec.init, position, num_layers, loops, spec.looping)
        group = depths_of_position(position, num_layers, loops, spec.looping)
        for path, module in parameter_leaves(layers[owner]):
            norm_sources = sources
            if path in family.norms and spec.norm_init != "source":
                norm_sources = {"average": group, "choice": sources[:1], "zero": []}[spec.norm_init]
            chosen = norm_sources if path in family.norms else sources
            for name, param in module.named_parameters(recurse=False):
                if not chosen:
                    values[position, path, name] = torch.zeros_like(param)
                    continue
                stack = [layers[s].get_submodule(path).get_parameter(name).detach().float() for s in chosen]
                values[position, path, name] = torch.stack(stack).mean(0).to(param.dtype)
    return values


def convert_to_recursive(model: nn.Module, spec: RecursionSpec, *, initialize: bool = True) -> nn.Module:
    """Turn ``model`` (L layers) into K = L / loops shared layers looped ``loops`` times; relax if asked.

    ``initialize=False`` builds the structure only (no weight copies, no SVD): used to load a saved
    converted model and to count parameters on the meta device.
    """
    family = family_for(model.config)
    layers = family.layer_list(model)
    num_layers = len(layers)
    spec.validate(num_layers)
    loops, looping = spec.loops, spec.looping
    generator = torch.Generator().manual_seed(spec.seed)

    if initialize and spec.init == "random":
        reinitialize(model, spec.seed)  # the paper's "Rand" baseline: no pretrained weights anywhere

    originals: dict[tuple[int, str], torch.Tensor] = {}
    if initialize and spec.lora.enabled and spec.lora.init == "svd":
        for depth, layer in enumerate(layers):
            for path in family.linears:
                originals[depth, path] = layer.get_submodule(path).weight.detach().clone()

    if initialize and spec.init != "random":
        with torch.no_grad():
            for (position, path, name), value in _shared_values(layers, family, spec).items():
                owner = depths_of_position(position, num_layers, loops, looping)[0]
                layers[owner].get_submodule(path).get_parameter(name).copy_(value)

    for depth, layer in enumerate(layers):
        owner = layers[depths_of_position(position_of_depth(depth, num_layers, loops, looping), num_layers, loops, looping)[0]]
        if owner is not layer:
            for path, module in list(parameter_leaves(owner)):
                replace_submodule(layer, path, module)

    if spec.lora.enabled:
        _relax(layers, family, spec, originals, generator, initialize)
    if spec.lora.freeze_shared:
        for name, param in model.named_parameters():
            param.requires_grad_(".lora_" in name)

    model.config.rrt_recursion = {**spec.to_dict(), "num_layers": num_layers, "family": family.name}
    return model


def _relax(layers, family, spec, originals, generator, initialize) -> None:
    adapter_class = ADAPTER_CLASSES[spec.lora.adapter]
    capped = set()
    for depth, layer in enumerate(layers):
        for path in family.linears:
            shared = layer.get_submodule(path)
            requested = requested_rank(spec, family, path, shared)
            rank = min(requested, shared.in_features, shared.out_features)
            if rank < requested:
                capped.add((path, requested, rank))
            if rank == 0:
                continue
            wrapper = adapter_class(shared, rank)
            if initialize:
                residual = originals[depth, path] - shared.weight.detach() if originals else None
                if residual is None or not torch.any(residual):
                    wrapper.init_standard(generator)  # zero residual: standard init (App. C)
                else:
                    wrapper.init_from_residual(residual, spec.lora.svd)
            replace_submodule(layer, path, wrapper)
    for path, requested, rank in sorted(capped):
        log.info("lora rank %d on %s capped at min(d_in, d_out) = %d", requested, path, rank)


def recursion_spec_of(model: nn.Module) -> RecursionSpec | None:
    """The spec a converted model was built with (None for an unconverted model)."""
    data = getattr(model.config, "rrt_recursion", None)
    return RecursionSpec.from_dict(data) if data else None

