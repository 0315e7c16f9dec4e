"""What a run is, as its record and analysis see it: read off the model that was built, never off the request.

A request can differ from what runs: ranks are capped at min(d_in, d_out), a post-training run inherits the
loaded model's recursion, a random init has no pretrained weights. The record's ``setting`` therefore comes
from the student itself (its recursion spec and adapters) plus facts about where it started and who taught it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torch import nn

from rrt.factory.plan import RunPlan
from rrt.models import RANK_GROUPS
from rrt.recursive import RecursionSpec, recursion_spec_of
from rrt.recursive.allocation import adapter_params
from rrt.recursive.convert import capped_rank, requested_rank
from rrt.recursive.model import RecursiveModel
from rrt.recursive.relax import DepthLoRALinear
from rrt.run_names import is_identity_key


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``{"a.b.c": leaf}`` (lists are leaves)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def run_identity(config: dict[str, Any]) -> dict[str, Any]:
    """The resolved config's keys that change what a run trains (flat)."""
    return {key: value for key, value in flatten(config).items() if is_identity_key(key)}


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(run_identity(config), sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every identity key that differs between two resolved configs."""
    before, after = run_identity(old), run_identity(new)
    return [
        f"{key}: {before.get(key)!r} -> {after.get(key)!r}"
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key)
    ]


def adapter_ranks(model: nn.Module) -> dict[str, list[int]]:
    """Effective adapter rank of every shared linear, per depth (0 where a depth has no adapter)."""
    recursive = RecursiveModel(model)
    family, layers = recursive.family, recursive.layers
    ranks: dict[str, list[int]] = {}
    for path in family.linears:
        modules = [layer.get_submodule(path) for layer in layers]
        ranks[path] = [m.rank if isinstance(m, DepthLoRALinear) else 0 for m in modules]
    return ranks


def group_ranks(model: nn.Module, spec: RecursionSpec) -> dict[str, int]:
    """Effective rank per rank group (q, kv, o, ffn): the largest rank its linears actually got (for LaMDA++, the
    uniform rank that sets its budget, so it lines up with LoRA and LaMDA at the same rank).

    A fused linear serves several groups with one rank chosen from theirs (``fused_rank``); its share of a group
    is that group's requested rank, scaled down by the fused linear's cap where it was capped.
    """
    recursive = RecursiveModel(model)
    family, layer = recursive.family, recursive.layers[0]
    if spec.lora.allocation is not None:  # lamda++: the uniform ranks whose budget its allocation spends
        effective = {path: capped_rank(spec, family, path, layer.get_submodule(path)) for path in family.linears}
    else:
        effective = {path: max(ranks) for path, ranks in adapter_ranks(model).items()}
    result = {}
    for group in RANK_GROUPS:
        values = [0]
        for path in family.linears:
            if group not in family.groups_of(path):
                continue
            if path in family.fused:
                requested = requested_rank(spec, family, path, layer.get_submodule(path))
                values.append(round(spec.lora.rank_for(group) * effective[path] / requested) if requested else 0)
            else:
                values.append(effective[path])
        result[group] = max(values)
    return result


def relaxation(model: nn.Module) -> dict[str, Any] | None:
    """Requested vs effective ranks for the record (None for a model without recursion)."""
    spec = recursion_spec_of(model)
    if spec is None:
        return None
    ranks = adapter_ranks(model)
    result = {
        "requested": {group: spec.lora.rank_for(group) for group in RANK_GROUPS},
        "effective": group_ranks(model, spec),
        # one number per linear when every depth has the same rank, else the per-depth list
        "ranks": {path: values[0] if len(set(values)) == 1 else values for path, values in ranks.items()},
        "freeze_shared": spec.lora.freeze_shared,
    }
    if spec.lora.allocation is not None:
        result["allocation"] = allocation_budget(model, spec)
    return result


def allocation_budget(model: nn.Module, spec: RecursionSpec) -> dict[str, Any]:
    """LaMDA++'s budget (adapter parameters at uniform ranks) and what its allocation spends of it."""
    recursive = RecursiveModel(model)
    family = recursive.family
    budget = used = 0
    for layer in recursive.layers:
        for path in family.linears:
            module = layer.get_submodule(path)
            base = module.base if isinstance(module, DepthLoRALinear) else module
            budget += adapter_params(
                spec.lora.adapter, capped_rank(spec, family, path, base), base.in_features, base.out_features
            )
            used += (
                sum(p.numel() for p in module.parameters(recurse=False)) if isinstance(module, DepthLoRALinear) else 0
            )
    return {"spectrum": "residual W_depth - W_shared (normalised energy)", "budget": budget, "used": used}


def data_novelty(run: RunPlan | DictConfig, start_record: dict[str, Any] | None) -> str | None:
    """``new`` when post-training reads none of the text its start run trained on, else ``overlap`` (J.1's Data).

    The in-memory sources visit rows in a seeded order, so skipping the tokens the start run consumed
    (``data.skip_tokens``) gives unseen rows when the corpus, seed and row length are the same; another corpus
    is new by construction; a different seed or row length re-reads the same text in another order. ``run`` is the
    run's plan (or its config): only its ``data`` group is read.
    """
    data = run.data
    if start_record is None:
        return None
    start_data = (start_record.get("config") or {}).get("data") or {}
    same_corpus = [start_data.get(k) for k in ("source", "train_files")] == [
        data.get(k) for k in ("source", "train_files")
    ]
    if not same_corpus:
        return "new"
    consumed = (start_record.get("setting") or {}).get("token_budget") or 0
    same_order = [start_data.get(k) for k in ("seed", "seq_len")] == [data.get(k) for k in ("seed", "seq_len")]
    return "new" if same_order and int(data.get("skip_tokens") or 0) >= consumed else "overlap"


def setting_of(plan: RunPlan, student: nn.Module, teacher: dict[str, Any] | None) -> dict[str, Any]:
    """Flat scalars that identify the run in analysis, from the built student and the run's plan (see the module
    docstring); ``teacher``: who teaches (rrt.factory.student.teacher_identity)."""
    variant, start, budget = plan.variant, plan.start, plan.budget
    spec = recursion_spec_of(student)
    recursive = spec is not None
    ranks = group_ranks(student, spec) if recursive else dict.fromkeys(RANK_GROUPS, 0)
    relaxed = recursive and spec.lora.enabled
    post = start is not None and recursive and plan.start_spec is not None
    start_record = _start_record(start)
    early_exit = plan.early_exit.loss
    return {
        # a run post-trained from another run is of that run's model (start_from says where it started)
        "model": ((start_record or {}).get("setting") or {}).get("model") or plan.model.name,
        "variant": variant,
        "pretrained": getattr(student.config, "rrt_pretrained", None),
        "loops": spec.loops if recursive else (plan.spec.loops if variant == "reduced" else 1),
        "looping": spec.looping if recursive else None,
        "init": spec.init if recursive else ("random" if variant == "reduced" else None),
        "norm_init": spec.norm_init if recursive else None,
        "lora_rank": max(ranks.values()),
        "lora_init": spec.lora.init if relaxed else None,
        "adapter": spec.lora.adapter if relaxed else None,
        **{f"rank_{g}": r for g, r in ranks.items()},
        "distill": plan.distill.loss,
        "distill_weight": plan.distill.weight,
        **(teacher or {"teacher": None, "teacher_sha256": None}),
        "early_exit": early_exit,
        "early_exit_coef": plan.early_exit.coef,
        "early_exit_kd": plan.early_exit.self_kd,
        "token_budget": budget.steps * budget.tokens_per_step,
        "seed": plan.seed,
        "data_skip_tokens": plan.data_skip_tokens,
        "start_from": str(start) if start else None,
        # early-exit training of an already uptrained recursive model is the paper's "Post"; of a fresh one "Co"
        "early_exit_phase": None if early_exit == "none" else ("post" if post else "co"),
        "early_exit_data": data_novelty(plan, start_record) if early_exit != "none" and post else None,
    }


def _start_record(start: Path | None) -> dict[str, Any] | None:
    """The record of the run whose ``model/`` a run starts from, when there is one."""
    if start is None or start.name != "model" or not (start.parent / "record.json").is_file():
        return None
    data = json.loads((start.parent / "record.json").read_text())
    return data if isinstance(data, dict) else None


def size_warning(params: dict[str, int]) -> str | None:
    """A relaxed model that is not smaller than the model it came from defeats the point: say so (not forbidden)."""
    mine, original = params.get("non_embedding", 0), params.get("original_non_embedding", 0)
    if original and mine >= original:
        return (
            f"N-emb {mine / 1e6:.1f}M is not smaller than the original model's {original / 1e6:.1f}M "
            f"({mine / original:.2f}x): the adapters outweigh the parameters recursion saves; use a smaller lora.rank"
        )
    return None
