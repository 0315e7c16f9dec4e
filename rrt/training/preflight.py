"""Every check of a training config that needs no compute, run before any model is built.

The order is the order a user would fix things in: where the run goes, the keys' types and ranges, the model, its
start run and teacher (resolved once into the run's ``RunPlan``, rrt.factory.plan), its recursion, the budget, the
data files, the devices, the evaluation. Each failure is a ``UserError`` naming the key or file and what to change.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from rrt.assets import MODELS, check_hub_model, is_hub_id
from rrt.data.jsonl import check_jsonl, expand_files
from rrt.errors import UserError
from rrt.factory.models import VARIANTS, check_model_name, check_model_source, num_layers
from rrt.factory.plan import RunPlan, plan_run
from rrt.recursive import RecursionSpec
from rrt.recursive.io import dtype_named
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


def check_tokenizer_fits(plan: RunPlan) -> None:
    """Every token id the tokenizer can produce must have an embedding row. The model group's default tokenizer is
    gemma-3-270m's, so post-training a saved run of another model without naming its tokenizer would otherwise fail
    on the first batch, with an index error deep in the embedding. (A smaller tokenizer cannot be told from a
    padded embedding, e.g. Pythia's, so only this direction is checked.)"""
    from rrt.assets import load_tokenizer

    tokenizer = load_tokenizer(plan.model.tokenizer)
    largest, vocab = max(tokenizer.get_vocab().values()), plan.architecture.vocab_size
    if largest >= vocab:
        raise UserError(
            f"model.tokenizer={plan.model.tokenizer} has {len(tokenizer):,} tokens but model.name={plan.model.name} "
            f"embeds {vocab:,}: pass the model's own tokenizer (model.tokenizer=<embedded name or dir>)"
        )


def check_seq_len(plan: RunPlan) -> None:
    limit = getattr(plan.architecture, "max_position_embeddings", None)
    if limit and plan.budget.seq_len > limit:
        raise UserError(
            f"budget.seq_len={plan.budget.seq_len} exceeds the model's {limit} positions "
            f"(max_position_embeddings): use budget.seq_len<={limit}"
        )


def check_loss_config(plan: RunPlan) -> None:
    """Settings that would give a meaningless objective."""
    if plan.early_exit.enabled and plan.variant != "recursive":
        raise UserError("early_exit needs a looped model: use variant=recursive")
    if plan.early_exit.enabled and plan.spec.loops == 1:
        raise UserError("early_exit needs at least two loops to exit from: use recursion.loops>=2")


def check_variant(plan: RunPlan) -> None:
    """Reject meaningless combinations before any weight is loaded."""
    variant, spec = plan.variant, plan.spec
    if variant not in VARIANTS:
        raise UserError(f"unknown variant {variant!r}; supported: {list(VARIANTS)}")
    spec.validate(num_layers(plan.architecture))
    if variant in ("full", "reduced") and spec.lora.enabled:
        raise UserError(f"variant={variant} has no shared layers to relax: set lora.rank=0 (got {spec.lora.rank})")
    if variant == "reduced" and spec.init != "random":
        raise UserError(
            "variant=reduced is trained from scratch (the paper's reduced-size baseline) and selects init=random "
            f"itself: drop init={spec.init}"
        )


def check_start_model(plan: RunPlan, explicit: list[str]) -> None:
    """A converted start model is post-trained as it was built: an explicit override that contradicts its
    recursion (e.g. ``lora.rank=8`` on an r=64 model) would be silently ignored, so it is an error."""
    if plan.start_spec is None:
        return
    requested = _spec_keys(plan.spec)
    built = _spec_keys(plan.start_spec)
    touched = [
        key
        for key in built
        if requested[key] != built[key] and any(key == o or key.startswith(o + ".") for o in explicit)
    ]
    if touched:
        said = ", ".join(f"{key}={requested[key]}" for key in touched)
        was = ", ".join(f"{key}={built[key]}" for key in touched)
        raise UserError(
            f"model.name={plan.model.name} is a converted model ({was}); {said} contradicts it: drop the "
            "override (a loaded model is trained as it was built) or convert the original model again"
        )


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


def preflight(cfg: DictConfig) -> RunPlan:
    """Every check that can fail without compute, in the order a user would fix them; the run's plan."""
    run_dir = Path(cfg.paths.run_dir)
    check_writable(run_dir)
    if cfg.resume not in ("auto", "never"):
        raise UserError(f"resume={cfg.resume!r}; supported: ['auto', 'never']")
    check_required(cfg)
    check_numbers(cfg)
    dtype_named(str(cfg.get("save_dtype", "float32")))
    check_model_source(str(cfg.model.source))
    check_hub_id(cfg)
    check_model_name(str(cfg.model.name))
    plan = plan_run(cfg)  # resolves the architecture, the start model and the teacher (a bad one fails here)
    check_variant(plan)
    check_start_model(plan, explicit_overrides())
    check_seq_len(plan)
    check_tokenizer_fits(plan)
    plan.budget.validate()
    check_loss_config(plan)
    check_data_files(cfg)
    check_devices(cfg)
    if plan.evaluates:
        from rrt.evaluation.runner import check_eval_config

        check_eval_config(cfg.eval, loops=plan.loops)
    return plan
