"""One training run: validate, build, fit, save the model, evaluate, and keep the run record."""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

import hydra
import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from rrt.assets import load_tokenizer
from rrt.recursive import count_params, count_params_from_config
from rrt.recursive.io import save_converted
from rrt.records import RunRecord
from rrt.training import build
from rrt.training.budget import Budget
from rrt.training.checkpoint import last_checkpoint
from rrt.training.losses import LossSpec, exit_weights
from rrt.training.module import RecursiveLMModule
from rrt.training.record_callback import RecordCallback

log = logging.getLogger(__name__)


def world_size(trainer_cfg: DictConfig) -> int:
    """devices x num_nodes, resolving 'auto' / -1 the way Lightning does for the chosen accelerator."""
    devices = trainer_cfg.get("devices", 1)
    if devices in ("auto", -1, "-1"):
        accelerator = trainer_cfg.get("accelerator", "cpu")
        devices = torch.cuda.device_count() if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available() else 1
    elif isinstance(devices, (list, tuple)) or hasattr(devices, "__len__") and not isinstance(devices, str):
        devices = len(devices)
    return int(devices) * int(trainer_cfg.get("num_nodes", 1))


def make_budget(cfg: DictConfig) -> Budget:
    budget = Budget(
        tokens=int(cfg.budget.tokens),
        seq_len=int(cfg.budget.seq_len),
        global_batch=int(cfg.budget.global_batch),
        micro_batch_size=int(cfg.budget.micro_batch_size),
        world_size=world_size(cfg.trainer),
        warmup_steps=int(cfg.budget.warmup_steps),
    )
    budget.validate()
    return budget


def check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise PermissionError(f"run dir {run_dir} is not writable ({error}); set paths.runs_root or hydra.run.dir") from error


def setting_of(cfg: DictConfig, budget: Budget) -> dict:
    """Flat scalars that identify the run in analysis (variant, init, loops, ranks, distill, early exit)."""
    spec = build.recursion_spec(cfg)
    variant = cfg.variant.name
    recursive = variant == "recursive"
    start = build.saved_model_dir(str(cfg.model.name))
    return {
        "model": str(cfg.model.name), "variant": variant, "pretrained": cfg.model.source == "pretrained" and variant != "reduced" and not (recursive and spec.init == "random"),
        "loops": spec.loops if variant != "full" else 1, "looping": spec.looping if recursive else None,
        "init": spec.init if variant != "full" else None, "norm_init": spec.norm_init if recursive else None,
        "lora_rank": spec.lora.rank if recursive else 0, "lora_init": spec.lora.init if recursive and spec.lora.enabled else None,
        "adapter": spec.lora.adapter if recursive and spec.lora.enabled else None,
        **{f"rank_{g}": spec.lora.rank_for(g) if recursive else 0 for g in ("q", "kv", "o", "ffn")},
        "distill": cfg.distill.loss, "distill_weight": float(cfg.distill.weight),
        "early_exit": cfg.early_exit.loss, "early_exit_coef": float(cfg.early_exit.coef), "early_exit_kd": bool(cfg.early_exit.self_kd),
        "token_budget": budget.steps * budget.tokens_per_step, "seed": int(cfg.seed),
        # early-exit training after uptraining (starting from a run's model) is the paper's "Post"; else "Co"
        "start_from": str(start) if start else None,
        "early_exit_phase": None if cfg.early_exit.loss == "none" else ("post" if start else "co"),
    }


def preflight(cfg: DictConfig) -> tuple[Budget, Path]:
    """Every check that can fail without compute, in the order a user would fix them."""
    run_dir = Path(cfg.paths.run_dir)
    check_writable(run_dir)
    arch = build.architecture(cfg)
    build.check_variant(cfg, build.num_layers(arch))
    budget = make_budget(cfg)
    if cfg.resume not in ("auto", "never"):
        raise ValueError(f"resume={cfg.resume!r}; supported: ['auto', 'never']")
    if cfg.early_exit.loss != "none" and cfg.variant.name != "recursive":
        raise ValueError("early_exit needs a looped model: use variant=recursive")
    if evaluates(cfg):
        from rrt.evaluation.runner import validate

        validate(cfg.eval)  # an eval mistake must not surface only after training
    return budget, run_dir


def train(cfg: DictConfig) -> RunRecord | None:
    """Run (or resume, or skip when already complete) the training run described by ``cfg``."""
    started = time.time()
    budget, run_dir = preflight(cfg)
    rank_zero = rank_zero_only.rank == 0
    checkpoint = last_checkpoint(run_dir) if cfg.resume == "auto" else None
    record = RunRecord.open(run_dir) if rank_zero else None
    if record is not None and record.complete and cfg.resume == "auto":
        log.info("run %s is already complete; nothing to do (resume=never starts over)", run_dir)
        return record
    log.info(budget.summary())

    L.seed_everything(int(cfg.seed), workers=True)
    convert_started = time.time()
    student = build.build_student(cfg)
    convert_s = time.time() - convert_started
    teacher = build.build_teacher(cfg, student)
    params = count_params(student)
    if record is not None:
        record.update(
            status="running", error=None, config=OmegaConf.to_container(cfg, resolve=True), setting=setting_of(cfg, budget),
            params={**params.to_dict(), "original_non_embedding": count_params_from_config(build.architecture(cfg)).non_embedding},
            budget=budget.to_dict(), timings={**record.data.get("timings", {}), "convert_s": convert_s},
        )
        if checkpoint is not None:
            record.truncate_metrics(after_step=torch.load(checkpoint, map_location="cpu", mmap=True, weights_only=False)["global_step"])
        else:
            record.truncate_metrics(after_step=0)

    freeze_at = cfg.lora.get("lamda_freeze_b_at")
    module = RecursiveLMModule(
        student, loss_spec(cfg, student), hydra.utils.instantiate(cfg.optim.optimizer), total_steps=budget.steps,
        warmup_steps=budget.warmup_steps, min_lr_ratio=float(cfg.optim.min_lr_ratio), tokens_per_step=budget.tokens_per_step,
        teacher=teacher, lamda_freeze_step=int(freeze_at * budget.steps) if cfg.lora.adapter == "lamda" else None,
    )
    datamodule = hydra.utils.instantiate(cfg.data)
    loggers = [hydra.utils.instantiate(c) for c in cfg.logger.values() if c is not None] if cfg.logger else []
    trainer = make_trainer(cfg, budget, run_dir, loggers, RecordCallback(record, every_n_steps=int(cfg.budget.log_every_n_steps)))
    if record is not None:
        record.update(cluster=cluster_info(trainer))

    train_started = time.time()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(checkpoint) if checkpoint else None)
    except Exception as error:  # the record says why the run stopped; a re-run resumes from last.ckpt
        if record is not None:
            record.update(status="failed", error=f"{type(error).__name__}: {error}")
        raise
    train_s = time.time() - train_started
    if not trainer.is_global_zero:
        return None

    tokenizer = load_tokenizer(cfg.model.tokenizer)
    save_converted(student, run_dir / "model", tokenizer=tokenizer)
    timings = {**record.data.get("timings", {}), "train_s": train_s}
    if evaluates(cfg):
        from rrt.evaluation.runner import run_evaluation

        eval_started = time.time()
        run_evaluation(cfg.eval, student, tokenizer, record=record)
        timings["eval_s"] = time.time() - eval_started
    timings["total_s"] = time.time() - started
    record.update(status="complete", timings=timings)
    for logger in loggers:
        if hasattr(logger.experiment, "finish"):  # wandb: close the (offline) run so its files are complete
            logger.experiment.finish()
    return record


def evaluates(cfg: DictConfig) -> bool:
    """Whether the run evaluates after training (eval tasks or perplexity configured; eval=none has neither)."""
    return bool(cfg.eval.get("tasks") or cfg.eval.get("perplexity"))


def loss_spec(cfg: DictConfig, student) -> LossSpec:
    """What the module optimises: exit weights, self-KD, teacher KD, chunking, soft-capping."""
    loops = student.config.rrt_recursion["loops"] if getattr(student.config, "rrt_recursion", None) else 1
    return LossSpec(
        exit_weights=tuple(exit_weights(cfg.early_exit.loss, loops, float(cfg.early_exit.coef))),
        self_kd=bool(cfg.early_exit.self_kd),
        kd=cfg.distill.loss,
        kd_weight=float(cfg.distill.weight) if cfg.distill.loss != "none" else 0.0,
        temperature=float(cfg.distill.temperature),
        chunk_tokens=int(cfg.loss.chunk_tokens),
        softcap=build.softcap_of(student),
    )


def make_trainer(cfg: DictConfig, budget: Budget, run_dir: Path, loggers: list, record_callback: RecordCallback) -> L.Trainer:
    """The Lightning Trainer of ``cfg.trainer``, stepping by the budget (validation interval in optimizer steps)."""
    callbacks = [hydra.utils.instantiate(c) for c in cfg.callbacks.values() if c is not None]
    return hydra.utils.instantiate(
        cfg.trainer,
        max_steps=budget.steps,
        accumulate_grad_batches=budget.accumulate,
        gradient_clip_val=cfg.optim.gradient_clip_val,
        val_check_interval=int(cfg.budget.val_check_interval) * budget.accumulate,
        check_val_every_n_epoch=None,
        limit_val_batches=int(cfg.budget.val_batches),
        log_every_n_steps=int(cfg.budget.log_every_n_steps),
        callbacks=[*callbacks, record_callback],
        logger=loggers or False,
        default_root_dir=str(run_dir),
    )


def cluster_info(trainer: L.Trainer) -> dict:
    return {
        "world_size": trainer.world_size, "num_nodes": trainer.num_nodes, "devices": trainer.num_devices,
        "accelerator": type(trainer.accelerator).__name__, "precision": str(trainer.precision),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "slurm_array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
        "hostname": socket.gethostname(),
    }
