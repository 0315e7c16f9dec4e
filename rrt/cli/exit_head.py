"""``python -m rrt.cli.exit_head run=<run dir>``: fit, calibrate and save the learned exit head of a recursive model.

The head (``rrt.serving.exit_head``) is fitted on teacher-forced windows of the corpus' train split with the model
frozen, calibrated to ``exit_head.target_agreement`` on held-back windows, reported on held-out text, saved beside
the model, and its report written into the run's record (``exit_head`` section).
"""

from __future__ import annotations

import json

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from rrt.cli.errors import compose_errors, one_line_errors
from rrt.conf import CONFIG_PATH
from rrt.errors import UserError
from rrt.factory.targets import load_target, model_dir_of
from rrt.serving.exit_head import ExitHeadFit, evaluate_exit_head, fit_exit_head, token_windows
from rrt.validation import check_device


@compose_errors
@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="exit_head")
@one_line_errors
def main(cfg: DictConfig) -> None:
    from rrt.data import load_documents

    settings = OmegaConf.to_container(cfg.exit_head)
    unknown = sorted(set(settings) - set(ExitHeadFit.__dataclass_fields__))
    if unknown:
        raise UserError(f"unknown key exit_head.{unknown[0]}; known: {sorted(ExitHeadFit.__dataclass_fields__)}")
    fit = ExitHeadFit(**settings)
    fit.check()
    check_device(cfg.device)
    directory = model_dir_of(cfg)
    if directory is None:
        raise UserError("name the model: run=<run dir> or checkpoint=<saved recursive model dir>")
    torch.set_num_threads(int(cfg.threads))
    model, tokenizer, record = load_target(cfg)
    head, report = fit_exit_head(model, tokenizer, load_documents("train"), fit)
    if cfg.heldout_tokens:
        windows = token_windows(tokenizer, load_documents("heldout"), fit.window, int(cfg.heldout_tokens))
        report["heldout"] = evaluate_exit_head(model, head, windows)
    head.save(directory, report)
    summary = {"thresholds": head.thresholds, **report}
    if record is not None:
        record.update(exit_head=summary)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
