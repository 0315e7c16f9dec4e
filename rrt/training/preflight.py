"""Every check of a training config that needs no compute, run before any model is built.

The order is the order a user would fix things in: where the run goes, the keys' types and ranges, the model and
its recursion, the budget, the data files, the teacher and start run, the devices, the evaluation. Each failure is
a ``UserError`` naming the key or file and what to change.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from rrt.assets import MODELS, check_hub_model, is_hub_id
from rrt.data.jsonl import check_jsonl, expand_files
from rrt.errors import UserError
from rrt.recursive.io import dtype_named
from rrt.training import build
from rrt.training.budget import Budget
from rrt.validation import (
    ANY_INT,
    COUNT,
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    POSITIVE_INT,
    Rule,
    check_required,
    check_value,
    check_values,
)

RULES: dict[str, Rule] = {
    "seed": ANY_INT,
    "budget.tokens": POSITIVE_INT,
    "budget.seq_len": Rule(int, lambda v: v >= 2, "an integer >= 2 (BOS + a token)"),
    "budget.global_batch": POSITIVE_INT,
    "budget.micro_batch_size": POSITIVE_INT,
    "budget.warmup_steps": COUNT,
    "budget.val_check_interval": POSITIVE_INT,
    "budget.val_batches": POSITIVE_INT,
    "budget.log_every_n_steps": POSITIVE_INT,
    "budget.checkpoint_every_n_steps": POSITIVE_INT,
    "loss.chunk_tokens": POSITIVE_INT,
    "distill.weight": NON_NEGATIVE,
    "early_exit.coef": NON_NEGATIVE,
    "optim.optimizer.lr": POSITIVE,
    "optim.min_lr_ratio": FRACTION,
    "optim.gradient_clip_val": Rule(float, lambda v: v > 0, "a number > 0 or null", nullable=True),
    "data.skip_tokens": COUNT,
    "data.num_workers": COUNT,
}


def check_numbers(cfg: DictConfig) -> None:
    """Types and ranges of the numeric keys (``seed=abc``, ``budget.micro_batch_size=0``, ...)."""
    check_values(cfg, RULES)
    if cfg.distill.loss != "none":
        check_value(
            "distill.temperature",
            cfg.distill.temperature,
            Rule(float, lambda v: v > 0, "> 0 (the paper's KD uses 1.0)"),
        )


def check_hub_id(cfg: DictConfig) -> None:
    """``model.name=<org/name>``: a hub model, downloaded by transformers where the network is allowed. Its tokenizer
    must come with it (a model group's embedded tokenizer has another vocabulary), and offline it must be cached."""
    name, tokenizer = str(cfg.model.name), str(cfg.model.tokenizer)
    if not is_hub_id(name):
        return
    if tokenizer in MODELS:
        raise UserError(
            f"model.name={name} is a hub model, but model.tokenizer={tokenizer} is the model group's embedded "
            f"tokenizer (another vocabulary): pass model.tokenizer={name} too"
        )
    check_hub_model(name, key="model.name")


def check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise PermissionError(
            f"run dir {run_dir} is not writable ({error}); set paths.runs_root or hydra.run.dir"
        ) from error


def task_overrides() -> list[str]:
    """The command line's overrides as Hydra parsed them (``['lora.rank=8', 'init=average']``); none outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def explicit_overrides() -> list[str]:
    """The keys the command line set (``['lora.rank', 'init']``)."""
    return [override.split("=", 1)[0].lstrip("+~") for override in task_overrides()]


def check_devices(cfg: DictConfig) -> None:
    """A GPU trainer on a machine without CUDA would fail deep inside Lightning."""
    accelerator = str(cfg.trainer.get("accelerator", "cpu"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(
            f"trainer.accelerator={accelerator} but this machine has no CUDA device: use trainer=cpu "
            "(or trainer=ddp trainer.accelerator=cpu for several CPU processes)"
        )


def check_data_files(cfg: DictConfig) -> None:
    """Training / validation files exist and their first lines are JSON objects with the text field."""
    for key in ("train_files", "val_files"):
        patterns = cfg.data.get(key)
        if cfg.data.source == "local_corpus" and key == "train_files" or not patterns:
            continue
        for path in expand_files(list(patterns)):
            check_jsonl(path, cfg.data.get("text_field", "text"))


def check_seq_len(cfg: DictConfig, arch) -> None:
    limit = getattr(arch, "max_position_embeddings", None)
    if limit and int(cfg.budget.seq_len) > limit:
        raise UserError(
            f"budget.seq_len={cfg.budget.seq_len} exceeds the model's {limit} positions "
            f"(max_position_embeddings): use budget.seq_len<={limit}"
        )


def check_loss_config(cfg: DictConfig) -> None:
    """Settings that would give a meaningless objective."""
    if cfg.early_exit.loss != "none" and cfg.variant.name != "recursive":
        raise UserError("early_exit needs a looped model: use variant=recursive")
    if cfg.early_exit.loss != "none" and int(cfg.recursion.loops) == 1:
        raise UserError("early_exit needs at least two loops to exit from: use recursion.loops>=2")


def make_budget(cfg: DictConfig, world_size: int) -> Budget:
    budget = Budget(
        tokens=int(cfg.budget.tokens),
        seq_len=int(cfg.budget.seq_len),
        global_batch=int(cfg.budget.global_batch),
        micro_batch_size=int(cfg.budget.micro_batch_size),
        world_size=world_size,
        warmup_steps=int(cfg.budget.warmup_steps),
    )
    budget.validate()
    return budget


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


def preflight(cfg: DictConfig) -> tuple[Budget, Path]:
    """Every check that can fail without compute, in the order a user would fix them."""
    run_dir = Path(cfg.paths.run_dir)
    check_writable(run_dir)
    if cfg.resume not in ("auto", "never"):
        raise UserError(f"resume={cfg.resume!r}; supported: ['auto', 'never']")
    check_required(cfg)
    check_numbers(cfg)
    dtype_named(str(cfg.get("save_dtype", "float32")))
    build.check_model_source(str(cfg.model.source))
    check_hub_id(cfg)
    build.check_model_name(str(cfg.model.name))
    arch = build.architecture(cfg)
    build.check_variant(cfg, build.num_layers(arch))
    build.check_start_model(cfg, explicit_overrides())
    check_seq_len(cfg, arch)
    budget = make_budget(cfg, world_size(cfg.trainer))
    check_loss_config(cfg)
    check_data_files(cfg)
    build.teacher_dir(cfg)
    check_devices(cfg)
    if evaluates(cfg):
        from rrt.evaluation.runner import validate

        validate(cfg.eval, loops=build.loops_of(cfg))
    return budget, run_dir


def evaluates(cfg: DictConfig) -> bool:
    """Whether the run evaluates after training (eval tasks or perplexity configured; eval=none has neither)."""
    return bool(cfg.eval.get("tasks") or cfg.eval.get("perplexity"))
