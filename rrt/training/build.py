"""Build the student (converted, full or reduced) and the frozen teacher from a composed config."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from rrt.assets import check_hub_model, ensure_model, is_hub_id
from rrt.errors import UserError
from rrt.models import family_for
from rrt.records import RECORD_NAME
from rrt.recursive import LoRASpec, RecursionSpec, convert_to_recursive, recursion_spec_of
from rrt.recursive.counting import model_config
from rrt.recursive.io import WEIGHTS, is_saved_model_dir, load_converted, saved_spec

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
    if cfg.model.source == "pretrained" and is_hub_id(str(cfg.model.name)):  # the hub model's, not model.config's
        return AutoConfig.from_pretrained(ensure_model(str(cfg.model.name)))
    return model_config(cfg.model.config)


def check_variant(cfg: DictConfig, num_layers: int) -> None:
    """Reject meaningless combinations before any weight is loaded."""
    variant = cfg.variant.name
    if variant not in VARIANTS:
        raise UserError(f"unknown variant {variant!r}; supported: {list(VARIANTS)}")
    spec = recursion_spec(cfg)
    spec.validate(num_layers)
    if variant in ("full", "reduced") and spec.lora.enabled:
        raise UserError(f"variant={variant} has no shared layers to relax: set lora.rank=0 (got {spec.lora.rank})")
    if variant == "reduced" and spec.init != "random":
        raise UserError(
            "variant=reduced is trained from scratch (the paper's reduced-size baseline) and selects init=random "
            f"itself: drop init={spec.init}"
        )


def saved_model_dir(name: str) -> Path | None:
    """A run dir's ``model/`` or a saved rrt model dir named by ``name``, else None."""
    for path in (Path(name) / "model", Path(name)):
        if is_saved_model_dir(path):
            return path
    return None


MODEL_SOURCES = ("pretrained", "config")


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


def original_model(cfg: DictConfig) -> nn.Module:
    """The starting model: a saved rrt model / run dir, pretrained weights from rrt.assets, or a seeded random init.

    ``config.rrt_pretrained`` says whether its weights come from pretraining (a saved model keeps its own flag).
    """
    name = str(cfg.model.name)
    saved = saved_model_dir(name)
    if saved is not None:
        return load_converted(saved)
    check_model_source(cfg.model.source)
    if cfg.model.source == "pretrained":
        from rrt.assets import load_pretrained

        model = load_pretrained(name)
    else:
        torch.manual_seed(int(cfg.seed))
        model = AutoModelForCausalLM.from_config(architecture(cfg))
    model.config.rrt_pretrained = cfg.model.source == "pretrained"
    return model


def check_start_model(cfg: DictConfig, explicit: list[str]) -> None:
    """A converted start model is post-trained as it was built: an explicit override that contradicts its
    recursion (e.g. ``lora.rank=8`` on an r=64 model) would be silently ignored, so it is an error."""
    start = saved_model_dir(str(cfg.model.name))
    loaded = saved_spec(start) if start is not None else None
    if loaded is None:
        return
    requested = _spec_keys(recursion_spec(cfg))
    built = _spec_keys(loaded)
    touched = [
        key
        for key in built
        if requested[key] != built[key] and any(key == o or key.startswith(o + ".") for o in explicit)
    ]
    if touched:
        said = ", ".join(f"{key}={requested[key]}" for key in touched)
        was = ", ".join(f"{key}={built[key]}" for key in touched)
        raise UserError(
            f"model.name={cfg.model.name} is a converted model ({was}); {said} contradicts it: drop the "
            "override (a loaded model is trained as it was built) or convert the original model again"
        )


def loops_of(cfg: DictConfig) -> int:
    """How many loops the trained model will have: the start model's when it is converted, else the config's."""
    start = saved_model_dir(str(cfg.model.name))
    loaded = saved_spec(start) if start is not None else None
    if loaded is not None:
        return loaded.loops
    return int(cfg.recursion.loops) if cfg.variant.name == "recursive" else 1


def _spec_keys(spec: RecursionSpec) -> dict[str, object]:
    """A spec as the config keys that set it (``init`` is the group, ``init.norm_init`` a key in it)."""
    lora = spec.lora
    return {
        "recursion.loops": spec.loops,
        "recursion.looping": spec.looping,
        "init": spec.init,
        "init.norm_init": spec.norm_init,
        "lora.rank": lora.rank,
        "lora.init": lora.init,
        "lora.adapter": lora.adapter,
        **{f"lora.ranks.{g}": (lora.ranks or {}).get(g) for g in ("q", "kv", "o", "ffn")},
        "lora.svd": lora.svd,
        "lora.freeze_shared": lora.freeze_shared,
    }


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
    if variant == "reduced":  # from_config initialises every weight: no pretrained weights survive
        torch.manual_seed(int(cfg.seed))
        model = AutoModelForCausalLM.from_config(reduced_config(architecture(cfg), int(cfg.recursion.loops)))
        model.config.rrt_variant, model.config.rrt_pretrained = "reduced", False
        return model
    model = original_model(cfg)
    if variant == "recursive" and recursion_spec_of(model) is None:
        spec = recursion_spec(cfg)
        convert_to_recursive(model, spec)
        if spec.init == "random":
            model.config.rrt_pretrained = False
    # else: an already converted model (model.name=<run dir>) is post-trained as it is, e.g. with early-exit losses
    model.config.rrt_variant = variant
    return model


def teacher_dir(cfg: DictConfig) -> Path | None:
    """The saved teacher model named by ``distill.teacher`` (None: the original checkpoint), checked before compute.

    The paper's teacher is the full-size model uptrained on the same data and budget (rrt-paper.md section 1.5),
    so a teacher that is the student's own starting checkpoint would distil the student from itself.
    """
    source = cfg.distill.get("teacher")
    if cfg.distill.loss == "none" or not source:
        return None
    path = saved_model_dir(str(source))
    if path is None:
        raise UserError(
            f"distill.teacher={source} is neither a finished run dir (with model/) nor a saved model dir: "
            "train the full-size baseline first (variant=full) and pass its run dir"
        )
    start = saved_model_dir(str(cfg.model.name))
    if start is not None and start.resolve() == path.resolve():
        raise UserError(
            f"distill.teacher={source} is the student's own starting model (model.name): use the "
            "full-size model uptrained on the same data (a variant=full run dir)"
        )
    return path


def teacher_identity(cfg: DictConfig) -> dict[str, str | None] | None:
    """Who teaches, for the record: a saved teacher by path and content hash, or the original checkpoint by name."""
    if cfg.distill.loss == "none":
        return None
    path = teacher_dir(cfg)
    if path is None:
        return {"teacher": f"original:{cfg.model.name}", "teacher_sha256": None}
    digest = hashlib.sha256()
    with open(path / WEIGHTS, "rb") as weights:
        for block in iter(lambda: weights.read(1 << 24), b""):
            digest.update(block)
    return {"teacher": str(path), "teacher_sha256": digest.hexdigest()}


def build_teacher(cfg: DictConfig, student: nn.Module) -> nn.Module | None:
    """The frozen full-size teacher: a run dir / saved model (``distill.teacher``) or the original model."""
    if cfg.distill.loss == "none":
        return None
    path = teacher_dir(cfg)
    teacher = load_converted(path) if path is not None else original_model(cfg)
    check_same_vocab(teacher, student)
    teacher.eval().requires_grad_(False)
    return teacher


def check_same_vocab(teacher: nn.Module, student: nn.Module) -> None:
    t, s = teacher.get_output_embeddings().weight.shape[0], student.get_output_embeddings().weight.shape[0]
    if t != s:
        raise UserError(f"teacher vocabulary ({t}) differs from the student's ({s}): KD needs the same tokenizer")


def num_layers(config: PretrainedConfig) -> int:
    family_for(config)  # unsupported family -> clear error early
    return int(config.num_hidden_layers)
