"""Models named by the ``model`` group: where a run starts, its architecture, and the reduced-size baseline's config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from rrt.assets import check_hub_model, ensure_model, is_hub_id
from rrt.errors import UserError
from rrt.models import family_for
from rrt.records import RECORD_NAME
from rrt.recursive.counting import model_config
from rrt.recursive.io import is_saved_model_dir, load_converted

VARIANTS = ("recursive", "full", "reduced")
MODEL_SOURCES = ("pretrained", "config")


@dataclass(frozen=True)
class ModelChoice:
    """The ``model`` group: ``name`` (an embedded model, a hub id, an HF checkpoint dir, a saved rrt model or a run
    dir), ``source`` (``pretrained`` weights, or ``config``: a seeded random init of the shipped architecture file
    ``config``) and the ``tokenizer``."""

    name: str
    source: str
    config: str | None = None
    tokenizer: str | None = None

    @classmethod
    def of(cls, model: DictConfig) -> ModelChoice:
        return cls(str(model.name), str(model.source), model.get("config"), model.get("tokenizer"))


def saved_model_dir(name: str) -> Path | None:
    """A run dir's ``model/`` or a saved rrt model dir named by ``name``, else None."""
    for path in (Path(name) / "model", Path(name)):
        if is_saved_model_dir(path):
            return path
    return None


def architecture(model: ModelChoice) -> PretrainedConfig:
    """The model's architecture without loading weights (shipped config, or the config of a checkpoint dir).

    Every call returns a new config: a model built from it owns (and changes) it.
    """
    saved = saved_model_dir(model.name)
    if saved is not None or Path(model.name).is_dir():
        return AutoConfig.from_pretrained(saved or model.name)  # a converted model keeps all L depths
    if model.source == "pretrained" and is_hub_id(model.name):  # the hub model's, not model.config's
        return AutoConfig.from_pretrained(ensure_model(model.name))
    return model_config(model.config)


def num_layers(config: PretrainedConfig) -> int:
    family_for(config)  # unsupported family -> clear error early
    return int(config.num_hidden_layers)


def check_model_source(source: str) -> None:
    if source not in MODEL_SOURCES:
        raise UserError(f"unknown model.source {source!r}; supported: {list(MODEL_SOURCES)}")


def check_model_name(name: str) -> None:
    """A ``model.name`` that names a path must be a finished run dir, a saved model or an HF checkpoint dir; one
    shaped like a hub id (``org/name``) that is no local path must be downloadable (rrt.assets.check_hub_model)."""
    path = Path(name).expanduser()
    if saved_model_dir(name) is not None or path.is_dir() and (path / "config.json").is_file():
        return
    if (path / RECORD_NAME).is_file():
        raise UserError(
            f"model.name={name} is a run dir without model/: the run has not finished (see its "
            f"{RECORD_NAME} status); resume it first, or start from another run"
        )
    if is_hub_id(name):
        check_hub_model(name)
    elif "/" in name or path.exists():
        raise UserError(f"model.name={name}: no such run dir, saved rrt model or HF checkpoint dir")


def original_model(model: ModelChoice, seed: int) -> nn.Module:
    """The starting model: a saved rrt model / run dir, pretrained weights from rrt.assets, or a seeded random init.

    ``config.rrt_pretrained`` says whether its weights come from pretraining (a saved model keeps its own flag).
    """
    saved = saved_model_dir(model.name)
    if saved is not None:
        return load_converted(saved)
    check_model_source(model.source)
    if model.source == "pretrained":
        from rrt.assets import load_pretrained

        built = load_pretrained(model.name)
    else:
        torch.manual_seed(seed)
        built = AutoModelForCausalLM.from_config(architecture(model))
    built.config.rrt_pretrained = model.source == "pretrained"
    return built


def reduced_config(config: PretrainedConfig, loops: int) -> PretrainedConfig:
    """Same width, L/B layers (the paper's reduced-size baseline); Gemma 3 recomputes its attention pattern."""
    data = config.to_dict()
    data["num_hidden_layers"] = config.num_hidden_layers // loops
    if data.get("layer_types") is not None:
        data["layer_types"] = data["layer_types"][: data["num_hidden_layers"]]
    data.pop("rrt_recursion", None)
    return AutoConfig.for_model(data.pop("model_type"), **data)


def teacher_dir(loss: str, source: str | None, start: Path | None) -> Path | None:
    """The saved teacher model named by ``distill.teacher`` (None: the original checkpoint), checked before compute.

    The paper's teacher is the full-size model uptrained on the same data and budget (rrt-paper.md section 1.5),
    so a teacher that is the student's own starting checkpoint (``start``) would distil the student from itself.
    """
    if loss == "none" or not source:
        return None
    path = saved_model_dir(str(source))
    if path is None:
        raise UserError(
            f"distill.teacher={source} is neither a finished run dir (with model/) nor a saved model dir: "
            "train the full-size baseline first (variant=full) and pass its run dir"
        )
    if start is not None and start.resolve() == path.resolve():
        raise UserError(
            f"distill.teacher={source} is the student's own starting model (model.name): use the "
            "full-size model uptrained on the same data (a variant=full run dir)"
        )
    return path
