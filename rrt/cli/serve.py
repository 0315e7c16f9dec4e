"""``python -m rrt.cli.serve run=<run dir> serve.policy=confidence``: measured serving throughput of a model.

Serves prompts cut from the held-out corpus with the CDB engine (or static / CSB batching) and writes a
row into the run's record ``throughput`` section, which analysis reads for Table K.2 / Fig. 8.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from rrt.cli.errors import compose_errors, one_line_errors
from rrt.cli.evaluate import load_target
from rrt.conf import CONFIG_PATH
from rrt.errors import UserError
from rrt.records import RunRecord
from rrt.serving import ConfidenceExit, Engine, ExitPolicy, FullDepth, OracleExit, exit_trajectories
from rrt.serving.records import ENGINE_OF_BATCHING, ROW_KEY, throughput_row
from rrt.serving.workload import oracle_schedule, text_requests
from rrt.validation import ANY_INT, FRACTION, POSITIVE_INT, check_device, check_output_file, check_values

POLICIES = ("none", "confidence", "oracle")
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


def validate(cfg: DictConfig) -> None:
    """Configuration errors, before any model or data is loaded."""
    check_values(cfg, RULES, prefix="serve.")
    if cfg.min_new_tokens > cfg.max_new_tokens:
        raise UserError(
            f"serve.min_new_tokens={cfg.min_new_tokens} > serve.max_new_tokens={cfg.max_new_tokens}: "
            "each request decodes a number of tokens in [min, max]"
        )
    if cfg.head_batch > cfg.max_batch:
        raise UserError(f"serve.head_batch={cfg.head_batch} must be <= serve.max_batch={cfg.max_batch}")
    if cfg.policy not in POLICIES:
        raise UserError(f"unknown serve.policy {cfg.policy!r}; supported: {list(POLICIES)}")
    if cfg.batching not in ENGINE_OF_BATCHING:
        raise UserError(f"unknown serve.batching {cfg.batching!r}; supported: {list(ENGINE_OF_BATCHING)}")


def make_policy(cfg: DictConfig, model, tokenizer, requests, documents) -> ExitPolicy:
    if cfg.policy == "confidence":
        return ConfidenceExit(cfg.threshold)
    if cfg.policy == "oracle":
        trajectories = exit_trajectories(model, tokenizer, documents, max_tokens=cfg.prompt_tokens + cfg.max_new_tokens)
        return OracleExit(oracle_schedule(trajectories, requests))
    return FullDepth()


def serve(cfg: DictConfig, model, tokenizer, record: RunRecord | None = None) -> dict:
    """One measured engine run; the row is added to ``record`` (replacing a row of the same setting)."""
    from rrt.data import load_documents

    validate(cfg)
    torch.set_num_threads(cfg.threads)
    requests, documents = text_requests(
        tokenizer,
        load_documents("heldout"),
        cfg.requests,
        cfg.prompt_tokens,
        cfg.min_new_tokens,
        cfg.max_new_tokens,
        cfg.seed,
    )
    policy = make_policy(cfg, model, tokenizer, requests, documents)
    engine = Engine(
        model,
        policy,
        max_batch=cfg.max_batch,
        scheduling="static" if cfg.batching == "static" else "continuous",
        head_batch=cfg.head_batch,
        attention=cfg.attention,
    )
    engine.generate(requests[:1])  # warm-up
    _, stats = engine.generate(requests)
    row = throughput_row(
        cfg.batching,
        policy.describe(),
        stats,
        cfg.max_batch,
        len(requests),
        head_batch=cfg.head_batch,
        attention=cfg.attention,
        exit_hist={str(b): n for b, n in sorted(stats.exit_loops.items())},
    )
    if record is not None:
        record.replace_rows("throughput", [row], key=ROW_KEY)
    return row


@compose_errors
@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="serve")
@one_line_errors
def main(cfg: DictConfig) -> None:
    validate(cfg.serve)
    check_device(cfg.device)
    check_output_file(cfg.serve.get("output"), "serve.output")
    model, tokenizer, record = load_target(cfg)
    row = serve(cfg.serve, model, tokenizer, record)
    print(json.dumps(row, indent=1))
    if cfg.serve.get("output"):
        Path(cfg.serve.output).write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
