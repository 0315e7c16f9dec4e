"""One measured serving run from the ``serve`` settings (conf/serve.yaml): requests from held-out text, the exit
policy, the engine, and the run's throughput row (the serving counterpart of ``rrt.evaluation.runner``).

Policies: ``none`` (all loops), ``confidence`` (top-1 probability after a loop), ``learned`` (the model's exit head,
``rrt.serving.exit_head``; its calibrated threshold unless ``serve.learned_threshold`` is set) and ``replay`` (the
teacher-forced oracle exit pattern of the requests' documents, replayed with real compute: it sets where tokens
exit, not what they are, so it bounds what an exit policy could give rather than being one).
"""

from __future__ import annotations

from omegaconf import DictConfig

from rrt.errors import UserError
from rrt.records import RunRecord
from rrt.serving.adapters import ADAPTER_CALLS
from rrt.serving.engine import BATCHINGS, Engine
from rrt.serving.exit_head import ExitHead
from rrt.serving.policies import ConfidenceExit, ExitPolicy, FullDepth, LearnedExit, ReplayExit
from rrt.serving.records import ROW_KEY, throughput_row
from rrt.serving.trajectories import window_trajectories
from rrt.serving.workload import oracle_schedule, text_requests
from rrt.validation import ANY_INT, FRACTION, POSITIVE_INT, check_values

POLICIES = ("none", "confidence", "learned", "replay")
RULES = {
    "max_batch": POSITIVE_INT,
    "head_batch": POSITIVE_INT,
    "requests": POSITIVE_INT,
    "prompt_tokens": POSITIVE_INT,
    "min_new_tokens": POSITIVE_INT,
    "max_new_tokens": POSITIVE_INT,
    "seed": ANY_INT,
    "threads": POSITIVE_INT,
    "threshold": FRACTION,
}


def check_serve_settings(cfg: DictConfig) -> None:
    """Configuration errors in the ``serve`` section, before any model or data is loaded."""
    check_values(cfg, RULES, prefix="serve.")
    if cfg.get("learned_threshold") is not None:
        check_values(cfg, {"learned_threshold": FRACTION}, prefix="serve.")
    if cfg.min_new_tokens > cfg.max_new_tokens:
        raise UserError(
            f"serve.min_new_tokens={cfg.min_new_tokens} > serve.max_new_tokens={cfg.max_new_tokens}: "
            "each request decodes a number of tokens in [min, max]"
        )
    if cfg.head_batch > cfg.max_batch:
        raise UserError(f"serve.head_batch={cfg.head_batch} must be <= serve.max_batch={cfg.max_batch}")
    if cfg.policy not in POLICIES:
        raise UserError(f"unknown serve.policy {cfg.policy!r}; supported: {list(POLICIES)}")
    if cfg.batching is not None and cfg.batching not in BATCHINGS:
        raise UserError(f"unknown serve.batching {cfg.batching!r}; supported: {list(BATCHINGS)}")
    if cfg.adapters not in ADAPTER_CALLS:
        raise UserError(f"unknown serve.adapters {cfg.adapters!r}; supported: {list(ADAPTER_CALLS)}")


def make_policy(cfg: DictConfig, model, requests, windows, exit_head: ExitHead | None) -> ExitPolicy:
    if cfg.policy == "confidence":
        return ConfidenceExit(cfg.threshold)
    if cfg.policy == "learned":
        if exit_head is None:
            raise UserError(
                "serve.policy=learned needs an exit head beside the model (exit_head.json); fit one with "
                "`python -m rrt.cli.exit_head run=<run dir>`"
            )
        return LearnedExit(exit_head, cfg.get("learned_threshold"))
    if cfg.policy == "replay":
        trajectories = window_trajectories(model, windows)
        return ReplayExit(oracle_schedule(trajectories, requests))
    return FullDepth()


def serve(
    cfg: DictConfig, model, tokenizer, record: RunRecord | None = None, exit_head: ExitHead | None = None
) -> dict:
    """One measured engine run; the row is added to ``record`` (replacing a row of the same setting)."""
    import torch

    from rrt.data import load_documents

    check_serve_settings(cfg)
    torch.set_num_threads(cfg.threads)
    requests, windows = text_requests(
        tokenizer,
        load_documents("heldout"),
        cfg.requests,
        cfg.prompt_tokens,
        cfg.min_new_tokens,
        cfg.max_new_tokens,
        cfg.seed,
    )
    policy = make_policy(cfg, model, requests, windows, exit_head)
    engine = Engine(
        model,
        policy,
        max_batch=cfg.max_batch,
        batching=cfg.batching,
        head_batch=cfg.head_batch,
        attention=cfg.attention,
        adapters=cfg.adapters,
    )
    engine.generate(requests[:1])  # warm-up
    _, stats = engine.generate(requests)
    row = throughput_row(
        engine.batching,
        policy.describe(),
        stats,
        cfg.max_batch,
        len(requests),
        head_batch=cfg.head_batch,
        attention=cfg.attention,
        adapters=cfg.adapters,
        exit_hist={str(b): n for b, n in sorted(stats.exit_loops.items())},
    )
    if record is not None:
        record.replace_rows("throughput", [row], key=ROW_KEY)
    return row
