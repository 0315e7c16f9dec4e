"""Unroll a (relaxed) recursive model into a plain L-layer Hugging Face checkpoint, and its adapters into PEFT.

A recursive model runs K shared layers B times; each depth d computes ``W' x + B_d A_d x`` (LaMDA: ``B_d S_d A_d``)
with W' shared. A plain checkpoint gives every depth its own weights: W' + B_d A_d merged, the shared norms copied,
so transformers, vLLM or ``lm_eval --model hf`` read it without rrt. The same function is also a PEFT model: a base
whose depth d holds W' and one LoRA per depth with ``lora_alpha = r`` (PEFT's scale ``alpha / r`` is then exactly
the paper's 1); LaMDA's ``B S A`` is the LoRA ``(B S) A``. What PEFT cannot hold is how LaMDA trains (A frozen, B
frozen column by column), so a PEFT adapter trained further is LoRA, not LaMDA.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig
from transformers.initialization import no_init_weights

from rrt.recursive.relax import DepthLoRALinear

PEFT_BASE, PEFT_ADAPTER = "peft/base", "peft/adapter"


@dataclass(frozen=True)
class Exported:
    """Where an export wrote its checkpoints (the PEFT pair is None for a model without adapters)."""

    merged: Path
    peft_base: Path | None = None
    peft_adapter: Path | None = None


def depth_adapters(model: nn.Module) -> dict[str, DepthLoRALinear]:
    """Every depth's adapter under its own path (``model.layers.3.self_attn.q_proj``): one per depth, never shared."""
    return {name: m for name, m in model.named_modules(remove_duplicate=False) if isinstance(m, DepthLoRALinear)}


def plain_config(config: PretrainedConfig) -> PretrainedConfig:
    """The model's architecture without rrt's keys (the recursion spec, the stock-loader refusal, run flags)."""
    data = {k: v for k, v in config.to_dict().items() if not k.startswith("rrt_") and k != "transformers_weights"}
    return AutoConfig.for_model(data.pop("model_type"), **data)


def unrolled_state(model: nn.Module, merge: bool = True) -> dict[str, torch.Tensor]:
    """The state dict of the plain L-layer model: each depth's linear is W' + its adapter's delta (``merge``) or W'.

    ``state_dict`` lists a tied leaf under every depth that uses it, so every depth gets its own copy of it.
    """
    adapters = depth_adapters(model)
    state = {}
    for key, tensor in model.state_dict().items():
        owner, _, leaf = key.rpartition(".")
        if owner in adapters:  # lora_A / lora_B / lora_S
            continue
        if owner.endswith(".base") and owner[: -len(".base")] in adapters:
            owner = owner[: -len(".base")]
            key = f"{owner}.{leaf}"
            if merge and leaf == "weight":
                tensor = (tensor.float() + adapters[owner].delta_weight().float()).to(tensor.dtype)
        state[key] = tensor
    return state


def unrolled_model(model: nn.Module, merge: bool = True) -> nn.Module:
    """A plain transformers model with the same function as ``model`` (``merge=False``: without the adapters)."""
    with no_init_weights():  # every tensor is overwritten below
        plain = AutoModelForCausalLM.from_config(plain_config(model.config), dtype=next(model.parameters()).dtype)
    plain.tie_weights()  # skipped under no_init_weights; a tied LM head must alias the embedding
    plain.load_state_dict(unrolled_state(model, merge), strict=True)
    return plain.eval()


def peft_config(model: nn.Module):
    """A LoRA config with one adapter per depth's linear, its own rank, and alpha = rank (scale exactly 1)."""
    from peft import LoraConfig

    ranks = {name: adapter.rank for name, adapter in depth_adapters(model).items()}
    rank = max(set(ranks.values()), key=list(ranks.values()).count)
    patterns = {re.escape(name): r for name, r in ranks.items() if r != rank}
    return LoraConfig(
        r=rank,
        lora_alpha=rank,
        target_modules=sorted(ranks),
        rank_pattern=patterns,
        alpha_pattern=patterns,
        lora_dropout=0.0,
        bias="none",
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )


def peft_model(model: nn.Module, base: nn.Module):
    """``base`` (the unrolled W' model, wrapped in place) as a PEFT model holding ``model``'s adapters."""
    from peft import get_peft_model

    wrapped = get_peft_model(base, peft_config(model))
    with torch.no_grad():
        for name, adapter in depth_adapters(model).items():
            target = wrapped.base_model.model.get_submodule(name)
            down, up = adapter.factors()
            target.lora_A["default"].weight.copy_(down)
            target.lora_B["default"].weight.copy_(up)
    return wrapped.eval()


def export(
    model: nn.Module, out: str | Path, tokenizer=None, peft: bool = True, dtype: torch.dtype | None = None
) -> Exported:
    """Write ``out`` (merged plain checkpoint) and, for a relaxed model with ``peft``, ``out/peft/{base,adapter}``."""
    out, dtype = Path(out), dtype or next(model.parameters()).dtype
    unrolled_model(model).to(dtype=dtype).save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    if not (peft and depth_adapters(model)):
        return Exported(out)
    base_dir, adapter_dir = out / PEFT_BASE, out / PEFT_ADAPTER
    base = unrolled_model(model, merge=False)
    base.to(dtype=dtype).save_pretrained(base_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(base_dir)
    wrapped = peft_model(model, base).to(dtype=dtype)
    wrapped.peft_config["default"].base_model_name_or_path = str(base_dir.resolve())
    wrapped.save_pretrained(adapter_dir)
    return Exported(out, base_dir, adapter_dir)
