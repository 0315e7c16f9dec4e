"""One training run, resolved once: the frozen ``RunPlan`` that the preflight, the driver and the record read.

``plan_run(cfg)`` reads the composed config once (the recursion spec, the token budget, the variant, the start model
and its saved spec, the teacher, the KD and early-exit settings) so that no later code re-derives them from the
``DictConfig``. What Hydra instantiates (optimizer, data module, trainer, callbacks, loggers) stays in the config.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import PretrainedConfig

from rrt.factory.models import ModelChoice, architecture, saved_model_dir, teacher_dir
from rrt.recursive import LoRASpec, RecursionSpec
from rrt.recursive.io import saved_spec
from rrt.training.budget import Budget


def recursion_spec(cfg: DictConfig) -> RecursionSpec:
    """The recursion the config asks for (``recursion``, ``init``, ``lora`` and ``seed``)."""
    lora = OmegaConf.to_container(cfg.lora, resolve=True)
    return RecursionSpec(
        loops=int(cfg.recursion.loops),
        looping=cfg.recursion.looping,
        init=cfg.init.name,
        norm_init=cfg.init.norm_init,
        lora=LoRASpec(**lora),
        seed=int(cfg.seed),
    )


@dataclass(frozen=True)
class Distillation:
    """The ``distill`` group: KD loss, its weight (0 without KD), temperature, and the teacher."""

    loss: str  # none | forward_kl | reverse_kl | jsd | tvd
    weight: float
    temperature: float
    teacher: str | None  # distill.teacher as given (None: the original checkpoint)
    teacher_dir: Path | None  # the saved teacher it names

    @property
    def enabled(self) -> bool:
        return self.loss != "none"


@dataclass(frozen=True)
class EarlyExit:
    """The ``early_exit`` group: the exit-weighting loss, its coefficient and self-distillation."""

    loss: str  # none | weighted | aggressive
    coef: float
    self_kd: bool

    @property
    def enabled(self) -> bool:
        return self.loss != "none"


@dataclass(frozen=True)
class RunPlan:
    """Everything a training run is, before any weight is loaded."""

    run_dir: Path
    resume: str  # auto | never
    seed: int
    variant: str  # recursive | full | reduced
    model: ModelChoice
    architecture: PretrainedConfig  # the starting model's (all L depths); never handed to a model
    spec: RecursionSpec  # the recursion the config asks for
    start: Path | None  # the saved rrt model (or run dir's model/) the student starts from
    start_spec: RecursionSpec | None  # its recursion, when it is a converted model (it is trained as it was built)
    budget: Budget
    distill: Distillation
    early_exit: EarlyExit
    chunk_tokens: int
    data: dict[str, Any]  # the resolved data group
    evaluates: bool  # whether the run evaluates after training

    @property
    def loops(self) -> int:
        """How many loops the trained model will have: the start model's when it is converted, else the config's."""
        if self.start_spec is not None:
            return self.start_spec.loops
        return self.spec.loops if self.variant == "recursive" else 1

    @property
    def data_skip_tokens(self) -> int:
        return int(self.data.get("skip_tokens") or 0)


def evaluates(cfg: DictConfig) -> bool:
    """Whether the run evaluates after training (eval tasks or perplexity configured; eval=none has neither)."""
    return bool(cfg.eval.get("tasks") or cfg.eval.get("perplexity"))


def world_size(trainer_cfg: DictConfig) -> int:
    """devices x num_nodes, resolving 'auto' / -1 the way Lightning does for the chosen accelerator."""
    devices = trainer_cfg.get("devices", 1)
    if devices in ("auto", -1, "-1"):
        accelerator = trainer_cfg.get("accelerator", "cpu")
        devices = (
            torch.cuda.device_count() if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available() else 1
        )
    elif isinstance(devices, (list, tuple)) or hasattr(devices, "__len__") and not isinstance(devices, str):
        devices = len(devices)
    return int(devices) * int(trainer_cfg.get("num_nodes", 1))


def budget_of(cfg: DictConfig, world_size: int) -> Budget:
    """The ``budget`` group on ``world_size`` processes (checked by the preflight: ``Budget.validate``)."""
    return Budget(
        tokens=int(cfg.budget.tokens),
        seq_len=int(cfg.budget.seq_len),
        global_batch=int(cfg.budget.global_batch),
        micro_batch_size=int(cfg.budget.micro_batch_size),
        world_size=world_size,
        warmup_steps=int(cfg.budget.warmup_steps),
    )


def plan_run(cfg: DictConfig) -> RunPlan:
    """Resolve a composed training config once. A teacher that is no saved model is a ``UserError`` here; the
    other checks of the plan are the preflight's (``rrt.training.preflight``)."""
    model = ModelChoice.of(cfg.model)
    start = saved_model_dir(model.name)
    distill = cfg.distill
    kd = distill.loss != "none"
    return RunPlan(
        run_dir=Path(cfg.paths.run_dir),
        resume=str(cfg.resume),
        seed=int(cfg.seed),
        variant=cfg.variant.name,
        model=model,
        architecture=architecture(model),
        spec=recursion_spec(cfg),
        start=start,
        start_spec=saved_spec(start) if start is not None else None,
        budget=budget_of(cfg, world_size(cfg.trainer)),
        distill=Distillation(
            loss=distill.loss,
            weight=float(distill.weight) if kd else 0.0,
            temperature=float(distill.temperature),
            teacher=distill.get("teacher"),
            teacher_dir=teacher_dir(distill.loss, distill.get("teacher"), start),
        ),
        early_exit=EarlyExit(
            loss=cfg.early_exit.loss, coef=float(cfg.early_exit.coef), self_kd=bool(cfg.early_exit.self_kd)
        ),
        chunk_tokens=int(cfg.loss.chunk_tokens),
        data=OmegaConf.to_container(cfg.data, resolve=True),
        evaluates=evaluates(cfg),
    )
