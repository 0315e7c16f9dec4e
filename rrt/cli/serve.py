"""``python -m rrt.cli.serve run=<run dir> serve.policy=learned``: measured serving throughput of a model.

Finds the model (``run=``, ``checkpoint=`` or ``model=``) and its exit head, runs ``rrt.serving.runner.serve`` and
writes the row into the run's record ``throughput`` section, which analysis reads for Table K.2 / Fig. 8.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig

from rrt.cli.errors import compose_errors, one_line_errors
from rrt.conf import CONFIG_PATH
from rrt.factory.targets import load_target, model_dir_of
from rrt.serving.exit_head import ExitHead
from rrt.serving.runner import check_serve_settings, serve
from rrt.validation import check_device, check_output_file


@compose_errors
@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="serve")
@one_line_errors
def main(cfg: DictConfig) -> None:
    check_serve_settings(cfg.serve)
    check_device(cfg.device)
    check_output_file(cfg.serve.get("output"), "serve.output")
    model, tokenizer, record = load_target(cfg)
    directory = model_dir_of(cfg)
    exit_head = ExitHead.load(directory) if directory else None
    row = serve(cfg.serve, model, tokenizer, record, exit_head)
    print(json.dumps(row, indent=1))
    if cfg.serve.get("output"):
        Path(cfg.serve.output).write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
