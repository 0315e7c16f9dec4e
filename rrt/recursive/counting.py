"""Parameter counts (N-emb = non-embedding parameters, the paper's size axis), from a model or a config."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from rrt.errors import UserError
from rrt.recursive.spec import RecursionSpec

MODEL_CONFIG_DIR = Path(__file__).resolve().parent.parent / "model_configs"


@dataclass(frozen=True)
class ParamCounts:
    total: int
    embedding: int  # input embedding + a separate (untied) LM head
    non_embedding: int  # "N-emb" in the paper's tables: layers (+ adapters) + final norm
    adapters: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def count_params(model: nn.Module) -> ParamCounts:
    """Counts unique parameters: a tied parameter counts once, however many depths use it."""
    params = {id(p): p for p in model.parameters()}
    embedding_ids = {id(model.get_input_embeddings().weight)}
    output = model.get_output_embeddings()
    if output is not None:
        embedding_ids.add(id(output.weight))
    total = sum(p.numel() for p in params.values())
    embedding = sum(params[i].numel() for i in embedding_ids if i in params)
    adapters = sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)
    return ParamCounts(total=total, embedding=embedding, non_embedding=total - embedding, adapters=adapters)


def model_config(name: str) -> PretrainedConfig:
    """An architecture shipped with rrt (``rrt/model_configs/<name>.json``), without weights."""
    path = MODEL_CONFIG_DIR / f"{name}.json"
    if not path.exists():
        known = sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.json"))
        raise UserError(f"unknown model config {name!r}; shipped: {known}")
    data = {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}
    return AutoConfig.for_model(data.pop("model_type"), **data)


def build_on_meta(config: PretrainedConfig, spec: RecursionSpec | None = None) -> nn.Module:
    """The (converted) architecture with meta tensors: shapes without memory or compute."""
    from rrt.recursive.convert import convert_to_recursive

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
        if spec is not None:
            convert_to_recursive(model, spec, initialize=False)
    return model


def count_params_from_config(config: PretrainedConfig | str, spec: RecursionSpec | None = None) -> ParamCounts:
    """N-emb etc. of a full (spec None) or converted model, from its config alone."""
    if isinstance(config, str):
        config = model_config(config)
    return count_params(build_on_meta(config, spec))
