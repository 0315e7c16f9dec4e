"""`python train.py <overrides>` / `rrt-train`: compose conf/config.yaml and run one training run."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from rrt.cli.errors import compose_errors, one_line_errors
from rrt.conf import CONFIG_PATH
from rrt.run_names import run_name

# hydra.run.dir / hydra.sweep.subdir: the run dir name of the job's overrides (also in SLURM workers, which import this)
OmegaConf.register_new_resolver("rrt.run_name", lambda overrides: run_name(list(overrides)), replace=True)


@compose_errors
@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")
@one_line_errors
def main(cfg: DictConfig) -> float | None:
    from rrt.training.run import train

    record = train(cfg)
    if record is None:
        return None
    print(summary(record))
    final = next((m for m in reversed(record.data.get("metrics", [])) if "loss" in m), {})
    return final.get("loss")


def summary(record) -> str:
    data = record.data
    params = data.get("params", {})
    budget = data.get("budget", {})
    final = next((m for m in reversed(data.get("metrics", [])) if "loss" in m), {})
    first = next((m for m in data.get("metrics", []) if "loss" in m), {})
    lines = [
        f"run: {data['run_dir']}  status: {data['status']}",
        f"N-emb: {params.get('non_embedding', 0) / 1e6:.1f}M "
        f"(original {params.get('original_non_embedding', 0) / 1e6:.1f}M)",
        f"steps: {budget.get('steps')}  tokens: {budget.get('tokens_trained')}",
        f"loss: {first.get('loss', float('nan')):.4f} -> {final.get('loss', float('nan')):.4f}",
        f"model: {data['run_dir']}/model   record: {data['run_dir']}/record.json",
    ]
    teacher = data.get("setting", {}).get("teacher")
    if teacher:
        lines.append(f"KD teacher: {teacher}")
    lines += [f"warning: {warning}" for warning in data.get("warnings") or []]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
