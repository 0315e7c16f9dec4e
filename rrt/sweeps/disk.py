"""The disk a sweep will need, printed before it launches: from each run's parameter count and the checkpoint policy.

Per run (``P`` = unique parameters of the model it trains, from its config on the meta device, no weights loaded):

- a checkpoint is the fp32 weights (4 B x P) plus the optimizer state (AdamW: exp_avg + exp_avg_sq, 8 B x P);
- while it trains, ``checkpoints/`` holds one periodic checkpoint (``last.ckpt`` is a link to it, not a copy) and,
  during a save, the new one next to the old: up to two checkpoints, plus the final model at the end;
- when it is complete, it keeps the model (``save_dtype``: 4 or 2 B x P, plus a copy of the tokenizer's files) and
  ``last.ckpt`` without optimizer state (4 B x P; ``keep_optimizer_state=true`` keeps the whole checkpoint).

A sharded (FSDP) checkpoint has the same bytes over several files. Records, logs and wandb files are small next to
these and are not counted.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

WEIGHT_BYTES = 4  # the checkpoint's weights: fp32 master weights, whatever the compute precision
SAVE_BYTES = {"float32": 4, "bfloat16": 2}


@dataclass(frozen=True)
class RunDisk:
    params: int
    checkpoint: int  # one checkpoint with optimizer state
    model: int  # the final model/ dir: weights and tokenizer files
    kept: int  # what a complete run keeps
    peak: int  # the most it holds while training


def optimizer_bytes_per_param(cfg: DictConfig) -> int:
    """Optimizer state per parameter: two fp32 moments for Adam-like optimizers, one for the rest (momentum)."""
    target = str(cfg.optim.optimizer.get("_target_", "")).lower()
    return 8 if "adam" in target else 4


def run_params(cfg: DictConfig) -> int:
    """Unique parameters of the model the run trains (ties count once; adapters included)."""
    from rrt.factory.models import ModelChoice, architecture, saved_model_dir
    from rrt.factory.plan import recursion_spec
    from rrt.recursive.counting import count_params_from_config
    from rrt.recursive.io import saved_spec

    arch = architecture(ModelChoice.of(cfg.model))
    start = saved_model_dir(str(cfg.model.name))
    if start is not None:
        spec = saved_spec(start)
    elif cfg.variant.name == "full":
        spec = None
    else:  # recursive, or reduced (its K = L/B layers from scratch have the strict recursive model's count)
        spec = recursion_spec(cfg)
    return count_params_from_config(arch, spec).total


def run_disk(cfg: DictConfig) -> RunDisk:
    params = run_params(cfg)
    weights = WEIGHT_BYTES * params
    checkpoint = weights + optimizer_bytes_per_param(cfg) * params
    model = SAVE_BYTES.get(str(cfg.get("save_dtype", "float32")), 4) * params + tokenizer_bytes(
        str(cfg.model.tokenizer)
    )
    kept = model + (checkpoint if cfg.get("keep_optimizer_state", False) else weights)
    return RunDisk(params=params, checkpoint=checkpoint, model=model, kept=kept, peak=2 * checkpoint + model)


def tokenizer_bytes(name: str) -> int:
    """Size of the tokenizer files a run copies into its model/ dir (0 when the tokenizer is not on this machine)."""
    from rrt.cache import cache_root

    directory = next((d for d in (Path(name).expanduser(), cache_root() / "models" / name) if d.is_dir()), None)
    if directory is None:
        return 0
    files = [p for p in directory.iterdir() if p.name.startswith(("tokenizer", "special_tokens_map", "chat_template"))]
    return sum(p.stat().st_size for p in files if p.is_file())


def gigabytes(n: int) -> str:
    """Bytes for people: ``1234 GB``, ``12.3 GB``, ``270 MB``, ``4.5 MB`` (three significant figures at most)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6)):
        if n >= size or unit == "MB":
            value = n / size
            return f"{value:.0f} {unit}" if value >= 100 else f"{value:.3g} {unit}"
    raise AssertionError  # pragma: no cover


def sweep_disk_summary(configs: Sequence[DictConfig], where: Path) -> str:
    """One paragraph for the sweep log: totals kept and at peak, the largest run, and the free space at ``where``."""
    if not configs:
        return "disk: no runs to train"
    runs = [run_disk(cfg) for cfg in configs]
    kept, all_at_once = sum(r.kept for r in runs), sum(r.peak for r in runs)
    one_at_a_time = kept + max(r.peak - r.kept for r in runs)
    largest = max(runs, key=lambda r: r.peak)
    keep = "with" if configs[0].get("keep_optimizer_state", False) else "without"
    lines = [
        f"disk: {len(runs)} runs to train keep ~{gigabytes(kept)} when done (model + last.ckpt {keep} optimizer "
        f"state each) and need up to ~{gigabytes(one_at_a_time)} while training one at a time, "
        f"~{gigabytes(all_at_once)} all at once; largest run: {largest.params / 1e6:.1f}M params, model "
        f"{gigabytes(largest.model)}, checkpoint with optimizer state {gigabytes(largest.checkpoint)} (two during a "
        "save; last.ckpt is a link)"
    ]
    free = free_bytes(where)
    if free is not None:
        lines.append(f"disk: {gigabytes(free)} free at {where}")
        if free < one_at_a_time:
            lines.append(
                f"warning: the sweep needs more disk than is free at {where}: point paths.runs_root at a larger "
                "file system, or train fewer runs at once"
            )
    return "\n".join(lines)


def free_bytes(where: Path) -> int | None:
    """Free bytes on the file system that will hold ``where`` (its nearest existing parent)."""
    path = Path(where).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None
