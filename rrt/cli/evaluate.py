"""``python eval.py run=<run dir> | checkpoint=<dir> | model=<embedded model>``: lm-eval accuracy + perplexity.

The evaluation itself is ``rrt.evaluation.runner.run_evaluation`` and the model comes from the factory
(``rrt.factory.targets.load_target``); this module only prints.
"""

from __future__ import annotations

import hydra
import pandas as pd
from omegaconf import DictConfig

from rrt.cli.errors import compose_errors, one_line_errors
from rrt.conf import CONFIG_PATH
from rrt.evaluation.runner import check_eval_config, run_evaluation
from rrt.factory.targets import load_target
from rrt.validation import check_device, check_output_file


def format_results(results: dict[str, list[dict]]) -> str:
    """Accuracy as task x exit loop (value ± stderr), then perplexity, as plain-text tables."""
    parts = []
    if results["evals"]:
        frame = pd.DataFrame(results["evals"])
        frame["score"] = [
            f"{v:.4f} ± {s:.4f}" if s is not None else f"{v:.4f}" for v, s in zip(frame.value, frame.stderr)
        ]
        table = frame.pivot_table(
            index=["task", "metric"], columns="exit_loop", values="score", aggfunc="first", sort=False
        )
        parts.append(table.rename(columns=lambda b: f"exit loop {b}").to_string())
    if results["perplexity"]:
        parts.append(pd.DataFrame(results["perplexity"]).to_string(index=False))
    return "\n\n".join(parts)


@compose_errors
@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="eval")
@one_line_errors
def main(cfg: DictConfig) -> None:
    check_eval_config(cfg.eval)
    check_device(cfg.device)
    check_output_file(cfg.get("output"))
    model, tokenizer, record = load_target(cfg)
    results = run_evaluation(cfg.eval, model, tokenizer, record=record, output=cfg.get("output"))
    print(format_results(results))
