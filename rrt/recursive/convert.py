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
from dataclasses import replace

import torch
from torch import nn

from rrt.errors import UserError
from rrt.models import FamilyAdapter, family_for
from rrt.models.family import fused_rank
from rrt.recursive.allocation import allocate_from_residuals, describe
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


def _shared_values(
    layers: nn.ModuleList, family: FamilyAdapter, spec: RecursionSpec
) -> dict[tuple[int, str, str], torch.Tensor]:
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
    if initialize and spec.lora.enabled and (spec.lora.init == "svd" or spec.lora.adapter == "lamda++"):
        for depth, layer in enumerate(layers):
            for path in family.linears:
                originals[depth, path] = layer.get_submodule(path).weight.detach().clone()

    if initialize and spec.init != "random":
        with torch.no_grad():
            for (position, path, name), value in _shared_values(layers, family, spec).items():
                owner = depths_of_position(position, num_layers, loops, looping)[0]
                layers[owner].get_submodule(path).get_parameter(name).copy_(value)

    for depth, layer in enumerate(layers):
        owner = layers[
            depths_of_position(position_of_depth(depth, num_layers, loops, looping), num_layers, loops, looping)[0]
        ]
        if owner is not layer:
            for path, module in list(parameter_leaves(owner)):
                replace_submodule(layer, path, module)

    if spec.lora.enabled:
        allocation = _relax(layers, family, spec, originals, generator, initialize)
        spec = replace(spec, lora=replace(spec.lora, allocation=allocation))
    if spec.lora.freeze_shared:
        freeze_shared(model)

    model.config.rrt_recursion = {**spec.to_dict(), "num_layers": num_layers, "family": family.name}
    return model


def freeze_shared(model: nn.Module) -> None:
    """PEFT-faithful training: only adapters train (and an adapter's own frozen part, LaMDA's A, stays frozen)."""
    for name, param in model.named_parameters():
        if ".lora_" not in name:
            param.requires_grad_(False)


def capped_rank(spec: RecursionSpec, family: FamilyAdapter, path: str, linear: nn.Linear) -> int:
    """Rank of one linear's adapter with uniform ranks: the requested one, capped at min(d_in, d_out)."""
    return min(requested_rank(spec, family, path, linear), linear.in_features, linear.out_features)


def _relax(layers, family, spec, originals, generator, initialize) -> dict[str, list[int]] | None:
    """Wrap every shared linear of every depth in its own adapter; returns LaMDA++'s allocation (else None)."""
    adapter_class = ADAPTER_CLASSES[spec.lora.adapter]
    linears = {
        (depth, path): layer.get_submodule(path) for depth, layer in enumerate(layers) for path in family.linears
    }
    ranks = {key: capped_rank(spec, family, key[1], linear) for key, linear in linears.items()}
    for path, requested, rank in sorted(
        {(key[1], requested_rank(spec, family, key[1], linear), ranks[key]) for key, linear in linears.items()}
    ):
        if rank < requested:
            log.info("lora rank %d on %s capped at min(d_in, d_out) = %d", requested, path, rank)

    def residual(key: tuple[int, str]) -> torch.Tensor | None:
        return originals[key] - linears[key].weight.detach() if originals else None

    allocation = None
    if spec.lora.adapter == "lamda++":
        allocation = spec.lora.allocation or _allocate(linears, ranks, residual, initialize)
        check_allocation(allocation, linears, len(layers))
        ranks = {(depth, path): allocation[path][depth] for depth, path in linears}
    for (depth, path), linear in linears.items():
        if ranks[depth, path] == 0:
            continue
        wrapper = adapter_class(linear, ranks[depth, path])
        if initialize:
            delta = residual((depth, path)) if spec.lora.init == "svd" else None
            if delta is None or not torch.any(delta):
                wrapper.init_standard(generator)  # zero residual: standard init (App. C)
            else:
                wrapper.init_from_residual(delta, spec.lora.svd)
        replace_submodule(layers[depth], path, wrapper)
    return allocation


def _allocate(linears, uniform, residual, initialize) -> dict[str, list[int]]:
    """LaMDA++ ranks from the residual spectra, as ``{path: [rank per depth]}`` (rrt.recursive.allocation)."""
    if not initialize:
        raise UserError(
            "lora.adapter=lamda++ allocates ranks from the residual spectra when it converts a model; "
            "to rebuild or count one without weights, use the spec saved with it "
            "(rrt.recursive.io.saved_spec(<model dir>)), which carries lora.allocation"
        )
    ranks = allocate_from_residuals(
        uniform, {key: (m.in_features, m.out_features) for key, m in linears.items()}, residual, "lamda++"
    )
    paths = dict.fromkeys(path for _, path in linears)
    depths = sorted({depth for depth, _ in linears})
    allocation = {path: [ranks[depth, path] for depth in depths] for path in paths}
    log.info("lamda++ %s", describe(allocation))
    return allocation


def check_allocation(allocation: dict[str, list[int]], linears: dict[tuple[int, str], nn.Linear], depths: int) -> None:
    """A saved allocation must name every linear, one whole rank per depth within min(d_in, d_out)."""
    paths = {path for _, path in linears}
    if set(allocation) != paths or any(len(ranks) != depths for ranks in allocation.values()):
        raise UserError(
            f"lora.allocation must list {depths} ranks for each of {sorted(paths)}; got "
            f"{ {path: len(ranks) for path, ranks in allocation.items()} }"
        )
    for (depth, path), linear in linears.items():
        rank = allocation[path][depth]
        if (
            isinstance(rank, bool)
            or not isinstance(rank, int)
            or not 0 <= rank <= min(linear.in_features, linear.out_features)
        ):
            raise UserError(
                f"lora.allocation[{path!r}][{depth}] = {rank!r} must be a whole number in "
                f"0..min(d_in, d_out) = {min(linear.in_features, linear.out_features)}"
            )


def recursion_spec_of(model: nn.Module) -> RecursionSpec | None:
    """The spec a converted model was built with (None for an unconverted model)."""
    data = getattr(model.config, "rrt_recursion", None)
    return RecursionSpec.from_dict(data) if data else None
