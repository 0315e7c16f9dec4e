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
from rrt.errors import UserError
from rrt.factory.plan import RunPlan
from rrt.factory.student import build_student, build_teacher, teacher_identity
from rrt.records import RECORD_NAME, RunRecord, now
from rrt.recursive import count_params, count_params_from_config
from rrt.recursive.io import WEIGHTS, check_finite, dtype_named, round_to, save_converted
from rrt.recursive.model import RecursiveModel
from rrt.training.budget import Budget
from rrt.training.checkpoint import drop_optimizer_state, last_checkpoint
from rrt.training.interrupt import RunInterrupted, terminate_as_interrupt
from rrt.training.loggers import log_experiment, make_loggers
from rrt.training.losses import LossSpec, exit_weights
from rrt.training.module import RecursiveLMModule
from rrt.training.preflight import preflight, task_overrides
from rrt.training.progress import single_log_handler
from rrt.training.record_callback import CONFIG_HASH_KEY, RecordCallback
from rrt.training.run_lock import run_dir_lock
from rrt.training.setting import config_differences, config_hash, relaxation, setting_of, size_warning
from rrt.training.strategy import trained_model

log = logging.getLogger(__name__)


def existing_record(run_dir: Path, config: dict, resume: str) -> RunRecord | None:
    """The run dir's record when it is the same run (None for a new run or ``resume=never``), read-only.

    Resuming (or calling "complete") a run dir trained with another configuration would let the record claim
    values the restored optimizer never used, so a mismatch is an error that names the keys.
    """
    path = run_dir / RECORD_NAME
    if resume == "never" or not path.exists():
        return None
    try:
        record = RunRecord.load(run_dir)
        old = record.data.get("config") or {}
    except (ValueError, AttributeError) as error:
        raise UserError(
            f"{path} is corrupt ({error}): delete it, or pass resume=never to start the run over"
        ) from error
    differences = config_differences(old, config) if old else []
    if differences:
        raise UserError(
            f"run dir {run_dir} holds a run with another configuration ({'; '.join(differences[:5])}): "
            "use another run dir (paths.run_dir=...), or resume=never to discard that run"
        )
    return record


def checkpoint_step(checkpoint: Path, expected_hash: str) -> int:
    """The optimizer step a checkpoint was saved at, after checking it belongs to this configuration.

    ``weights_only=True`` never runs code from the file (a planted checkpoint cannot execute anything).
    """
    try:
        state = torch.load(checkpoint, map_location="cpu", mmap=True, weights_only=True)
    except Exception as error:  # truncated file, or one holding more than plain tensors and containers
        raise UserError(
            f"{checkpoint} cannot be read safely ({type(error).__name__}): delete it, or pass "
            "resume=never to start the run over"
        ) from error
    saved_hash = state.get(CONFIG_HASH_KEY)
    if saved_hash not in (None, expected_hash):
        raise UserError(
            f"{checkpoint} was saved by a run with another configuration: use another run dir, or "
            "resume=never to start over"
        )
    return int(state["global_step"])


def train(cfg: DictConfig) -> RunRecord | None:
    """Run (or resume, or skip when already complete) the training run described by ``cfg``."""
    started = time.time()
    single_log_handler()
    plan = preflight(cfg)
    if rank_zero_only.rank != 0:  # DDP ranks > 0: rank 0 owns the run dir and its record
        return _train(cfg, plan, OmegaConf.to_container(cfg, resolve=True), None, last_step_checkpoint(plan), started)
    with run_dir_lock(plan.run_dir), terminate_as_interrupt():
        return _train_rank_zero(cfg, plan, started)


def last_step_checkpoint(plan: RunPlan) -> Path | None:
    return last_checkpoint(plan.run_dir) if plan.resume == "auto" else None


def _train_rank_zero(cfg: DictConfig, plan: RunPlan, started: float) -> RunRecord:
    config, run_dir = OmegaConf.to_container(cfg, resolve=True), plan.run_dir
    record = existing_record(run_dir, config, plan.resume)
    if record is not None and record.complete:
        log.info("run %s is already complete; nothing to do (resume=never starts over)", run_dir)
        return record
    checkpoint = last_step_checkpoint(plan)
    step = checkpoint_step(checkpoint, config_hash(config)) if checkpoint is not None else 0
    record = record or RunRecord.create(run_dir, config=config, config_hash=config_hash(config))
    record.update(status="running", error=None, pid=os.getpid(), host=socket.gethostname(), heartbeat=now())
    record.truncate_metrics(after_step=step)
    try:
        return _train(cfg, plan, config, record, checkpoint, started)
    except (RunInterrupted, KeyboardInterrupt, SystemExit) as error:  # a signal: resumable from last.ckpt
        record.update(status="interrupted", error=str(error) or type(error).__name__)
        raise
    except BaseException as error:  # the record says why the run stopped; a re-run resumes from last.ckpt
        record.update(status="failed", error=f"{type(error).__name__}: {error}")
        raise
    finally:
        remove_partial_files(run_dir)


def remove_partial_files(run_dir: Path) -> None:
    """Half-written checkpoint / model files (``*.tmp``) of a run that stopped; complete files are kept."""
    for pattern in ("checkpoints/*.tmp", "model/*.tmp"):
        for path in run_dir.glob(pattern):
            path.unlink(missing_ok=True)


def _train(
    cfg: DictConfig,
    plan: RunPlan,
    config: dict,
    record: RunRecord | None,
    checkpoint: Path | None,
    started: float,
) -> RunRecord | None:
    """Build, fit, save, evaluate: ``plan`` says what is trained; ``cfg`` gives what Hydra instantiates."""
    budget, run_dir = plan.budget, plan.run_dir
    log.info(budget.summary())
    L.seed_everything(plan.seed, workers=True)
    convert_started = time.time()
    student = build_student(plan)
    convert_s = time.time() - convert_started
    teacher = build_teacher(plan, student)
    if record is not None:
        params = {
            **count_params(student).to_dict(),
            "original_non_embedding": count_params_from_config(plan.architecture).non_embedding,
        }
        warnings = [w for w in (size_warning(params), teacher_warning(plan)) if w]
        for warning in warnings:
            log.warning("%s", warning)
        record.update(
            config=config,
            config_hash=config_hash(config),
            overrides=task_overrides(),
            setting=setting_of(plan, student, teacher_identity(plan)),
            relaxation=relaxation(student),
            warnings=warnings,
            params=params,
            budget=budget.to_dict(),
            timings={**record.data.get("timings", {}), "convert_s": convert_s},
        )

    module = RecursiveLMModule(
        student,
        loss_spec(plan, student),
        hydra.utils.instantiate(cfg.optim.optimizer),
        total_steps=budget.steps,
        warmup_steps=budget.warmup_steps,
        min_lr_ratio=float(cfg.optim.min_lr_ratio),
        tokens_per_step=budget.tokens_per_step,
        teacher=teacher,
    )
    datamodule = hydra.utils.instantiate(cfg.data)
    loggers = make_loggers(cfg, record)
    if record is not None:
        log_experiment(loggers, config, record.data["setting"])
    callback = RecordCallback(record, every_n_steps=int(cfg.budget.log_every_n_steps), config_hash=config_hash(config))
    trainer = make_trainer(cfg, budget, run_dir, loggers, callback)
    if record is not None:
        record.update(cluster=cluster_info(trainer))

    train_started = time.time()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(checkpoint) if checkpoint else None, weights_only=True)
    finally:  # wandb: close the (offline) run whatever happened, so its files are complete
        for logger in loggers:
            if hasattr(logger.experiment, "finish"):
                logger.experiment.finish()
    train_s = time.time() - train_started
    student = trained_model(trainer, student)  # FSDP: all-gathered into one plain model on rank 0
    if not trainer.is_global_zero:
        return None

    check_finite(student, run_dir / "model")  # a diverged model is never saved as a result
    tokenizer = load_tokenizer(plan.model.tokenizer)
    save_dtype = str(cfg.get("save_dtype", "float32"))
    save_converted(student, run_dir / "model", tokenizer=tokenizer, dtype=dtype_named(save_dtype))
    if save_dtype != "float32":  # evaluate what was saved: the stored precision, computed in fp32
        round_to(student, dtype_named(save_dtype))
    weights = run_dir / "model" / WEIGHTS
    record.update(saved_model={"dir": "model", "dtype": save_dtype, "bytes": weights.stat().st_size})
    timings = {**record.data.get("timings", {}), "train_s": train_s}
    if plan.evaluates:
        from rrt.evaluation.runner import run_evaluation

        eval_started = time.time()
        run_evaluation(cfg.eval, student, tokenizer, record=record)
        timings["eval_s"] = time.time() - eval_started
    timings["total_s"] = time.time() - started
    record.update(status="complete", timings=timings)
    if not cfg.get("keep_optimizer_state", False):
        drop_optimizer_state(run_dir)
    return record


def teacher_warning(plan: RunPlan) -> str | None:
    """KD from the original checkpoint is allowed, but it is not the paper's teacher: say so."""
    if not plan.distill.enabled or plan.distill.teacher:
        return None
    return (
        f"KD teacher is the original checkpoint {plan.model.name}, not the paper's teacher (the full-size model "
        "uptrained on the same data and budget): pass distill.teacher=<variant=full run dir>"
    )


def loss_spec(plan: RunPlan, student) -> LossSpec:
    """What the module optimises: exit weights (over the built student's loops), self-KD, teacher KD, chunking,
    soft-capping."""
    loops = student.config.rrt_recursion["loops"] if getattr(student.config, "rrt_recursion", None) else 1
    early_exit, distill = plan.early_exit, plan.distill
    return LossSpec(
        exit_weights=tuple(exit_weights(early_exit.loss, loops, early_exit.coef)),
        self_kd=early_exit.self_kd,
        kd=distill.loss,
        kd_weight=distill.weight,
        temperature=distill.temperature,
        chunk_tokens=plan.chunk_tokens,
        softcap=RecursiveModel(student).softcap,
    )


def make_trainer(
    cfg: DictConfig, budget: Budget, run_dir: Path, loggers: list, record_callback: RecordCallback
) -> L.Trainer:
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
        "world_size": trainer.world_size,
        "num_nodes": trainer.num_nodes,
        "devices": trainer.num_devices,
        "accelerator": type(trainer.accelerator).__name__,
        "precision": str(trainer.precision),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
        "hostname": socket.gethostname(),
    }
