"""Build the student (converted, full or reduced) and the frozen teacher from a composed config."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from rrt.models import family_for
from rrt.recursive import LoRASpec, RecursionSpec, convert_to_recursive, recursion_spec_of
from rrt.recursive.counting import model_config
from rrt.recursive.io import is_saved_model_dir, load_converted

log = logging.getLogger(__name__)
VARIANTS = ("recursive", "full", "reduced")


def recursion_spec(cfg: DictConfig) -> RecursionSpec:
    lora = OmegaConf.to_container(cfg.lora, resolve=True)
    return RecursionSpec(
        loops=int(cfg.recursion.loops),
        looping=cfg.recursion.looping,
        init=cfg.init.name,
        norm_init=cfg.init.norm_init,
        lora=LoRASpec(**lora),
        seed=int(cfg.seed),
    )


def architecture(cfg: DictConfig) -> PretrainedConfig:
    """The model's architecture without loading weights (shipped config, or the config of a checkpoint dir)."""
    saved = saved_model_dir(str(cfg.model.name))
    if saved is not None or Path(str(cfg.model.name)).is_dir():
        return AutoConfig.from_pretrained(saved or cfg.model.name)  # a converted model keeps all L depths
    return model_config(cfg.model.config)


def check_variant(cfg: DictConfig, num_layers: int) -> None:
    """Reject meaningless combinations before any weight is loaded."""
    variant = cfg.variant.name
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; supported: {list(VARIANTS)}")
    spec = recursion_spec(cfg)
    spec.validate(num_layers)
    if variant in ("full", "reduced") and spec.lora.enabled:
        raise ValueError(f"variant={variant} has no shared layers to relax: set lora.rank=0 (got {spec.lora.rank})")
    if variant == "reduced" and spec.init != "random":
        raise ValueError(
            "variant=reduced is trained from scratch (the paper's reduced-size baseline) and selects init=random "
            f"itself: drop init={spec.init}"
        )


def saved_model_dir(name: str) -> Path | None:
    """A run dir's ``model/`` or a saved rrt model dir named by ``name``, else None."""
    for path in (Path(name) / "model", Path(name)):
        if is_saved_model_dir(path):
            return path
    return None


def original_model(cfg: DictConfig) -> nn.Module:
    """The starting model: a saved rrt model / run dir, pretrained weights from rrt.assets, or a seeded random init."""
    name = str(cfg.model.name)
    saved = saved_model_dir(name)
    if saved is not None:
        return load_converted(saved)
    if cfg.model.source == "pretrained":
        from rrt.assets import load_pretrained

        return load_pretrained(name)
    if cfg.model.source == "config":
        torch.manual_seed(int(cfg.seed))
        return AutoModelForCausalLM.from_config(architecture(cfg))
    raise ValueError(f"unknown model.source {cfg.model.source!r}; supported: ['pretrained', 'config']")


def reduced_config(config: PretrainedConfig, loops: int) -> PretrainedConfig:
    """Same width, L/B layers (the paper's reduced-size baseline); Gemma 3 recomputes its attention pattern."""
    data = config.to_dict()
    data["num_hidden_layers"] = config.num_hidden_layers // loops
    if data.get("layer_types") is not None:
        data["layer_types"] = data["layer_types"][: data["num_hidden_layers"]]
    data.pop("rrt_recursion", None)
    return AutoConfig.for_model(data.pop("model_type"), **data)


def build_student(cfg: DictConfig) -> nn.Module:
    """The model to train, in train mode (pretrained weights are loaded in eval mode)."""
    return _student(cfg).train()


def _student(cfg: DictConfig) -> nn.Module:
    variant = cfg.variant.name
    if variant == "reduced":
        torch.manual_seed(int(cfg.seed))
        model = AutoModelForCausalLM.from_config(reduced_config(architecture(cfg), int(cfg.recursion.loops)))
        model.config.rrt_variant = "reduced"
        return model
    model = original_model(cfg)
    if variant == "recursive" and recursion_spec_of(model) is None:
        convert_to_recursive(model, recursion_spec(cfg))
    # else: an already converted model (model.name=<run dir>) is post-trained as it is, e.g. with early-exit losses
    model.config.rrt_variant = variant
    return model


def build_teacher(cfg: DictConfig, student: nn.Module) -> nn.Module | None:
    """The frozen full-size teacher: the original model (default) or a run dir / saved model (distill.teacher)."""
    if cfg.distill.loss == "none":
        return None
    source = cfg.distill.teacher
    if source:
        path = saved_model_dir(str(source))
        if path is None:
            raise FileNotFoundError(f"distill.teacher={source} is neither a run dir with model/ nor a saved model dir")
        teacher = load_converted(path)
    else:
        teacher = original_model(cfg)
    check_same_vocab(teacher, student)
    teacher.eval().requires_grad_(False)
    return teacher


def check_same_vocab(teacher: nn.Module, student: nn.Module) -> None:
    t, s = teacher.get_output_embeddings().weight.shape[0], student.get_output_embeddings().weight.shape[0]
    if t != s:
        raise ValueError(f"teacher vocabulary ({t}) differs from the student's ({s}): KD needs the same tokenizer")


def final_hidden(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Final-normed hidden states (B, T, H) from the base model, without computing the LM head."""
    return model.base_model(input_ids=input_ids, use_cache=False).last_hidden_state


def softcap_of(model: nn.Module) -> float | None:
    return getattr(model.config, "final_logit_softcapping", None)


def num_layers(config: PretrainedConfig) -> int:
    family_for(config)  # unsupported family -> clear error early
    return int(config.num_hidden_layers)
