"""The early-exit-trained models behind the serving benchmark: their records (not weights) and exit-head reports.

``benchmarks/exit_models.sh`` trains them; this copies each post-trained run's ``record.json`` (and its start run's)
and ``model/exit_head.json`` into ``benchmarks/results/exit_models/<name>/`` (paths relative to the runs root) and
adds them to ``benchmarks/results/exit_models.json`` (rows of models collected earlier stay), which ``python -m
benchmarks.docs`` renders into docs/serving.md: per model, the training that made it, loop-by-loop held-out
perplexity, and the exits the oracle and the learned head give on held-out text (teacher-forced).

    python -m benchmarks.exit_models <post-trained run dir> [...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.common import RESULTS, portable, thresholds_text
from benchmarks.serving import FULL_RECORD
from rrt.records import RunRecord

OUT = RESULTS / "exit_models"


def name_of(setting: dict) -> str:
    """Model, init, loops and exit post-training tokens: models trained with another budget keep their own files."""
    return f"{setting['model']}_{setting['init']}_b{setting['loops']}_post{setting['token_budget']}"


def _copy_portable(source: Path, target: Path, runs_root: Path) -> None:
    """Copy a record with its paths relative to the runs root it was trained under (``train/<run>``), not this
    machine's absolute paths."""
    target.write_text(portable(source.read_text(), runs_root))


def start_run(setting: dict) -> Path:
    """The run a post-trained run started from (its saved model dir's run dir)."""
    start = Path(setting["start_from"])
    return start.parent if start.name == "model" else start


def full_model_name(setting: dict) -> str:
    """The embedded full-size model a run descends from: records written before the setting named the start run's
    model gave the start run's path as the model, so follow it to the start run's record."""
    record = start_run(setting) / "record.json" if setting.get("start_from") else None
    if record is not None and record.is_file():
        return full_model_name(RunRecord.load(record.parent).data["setting"])
    return setting["model"]


def collect(run: Path) -> dict:
    """One post-trained run: what made it and what it gives; copies the files it rests on into ``OUT``."""
    record = RunRecord.load(run).data
    setting = dict(record["setting"])
    start = start_run(setting)
    uptrain = RunRecord.load(start).data if (start / "record.json").is_file() else None
    if uptrain is not None:  # old records named the start run's path as the model: the start run's model it is
        setting["model"] = full_model_name(uptrain["setting"])
    target = OUT / name_of(setting)
    target.mkdir(parents=True, exist_ok=True)
    _copy_portable(run / "record.json", target / "record.json", run.parent.parent)
    head = json.loads((run / "model" / "exit_head.json").read_text())
    _copy_portable(run / "model" / "exit_head.json", target / "exit_head.json", run.parent.parent)
    if uptrain is not None:
        _copy_portable(start / "record.json", target / "uptrain_record.json", run.parent.parent)
    full = run.parent / FULL_RECORD.format(model=setting["model"])
    if (full / "record.json").is_file():  # the full model's serving rows (benchmarks/serving.py --record)
        _copy_portable(full / "record.json", target / "full_model_record.json", run.parent.parent)
    heldout = head["heldout"]
    return {
        "name": target.name,
        "status": record["status"],
        "model": setting["model"],
        "init": setting["init"],
        "loops": setting["loops"],
        "early_exit": setting["early_exit"],
        "uptrain_tokens": uptrain["setting"]["token_budget"] if uptrain else None,
        "post_tokens": setting["token_budget"],
        "oracle_exit_frac_loop1": heldout["oracle"]["exit_frac_loop1"],
        "oracle_mean_exit_loop": heldout["oracle"]["mean_exit_loop"],
        "thresholds": head["thresholds"],
        "learned_exit_frac_loop1": heldout["learned"]["exit_frac_loop1"],
        "learned_mean_exit_loop": heldout["learned"]["mean_exit_loop"],
        "learned_agreement": heldout["learned"]["agreement"],
        "target_agreement": head["fit"]["target_agreement"],
        "auc": heldout["auc"],
        "heldout_tokens": heldout["tokens"],
        "ppl": {str(r["exit_loop"]): r["ppl"] for r in record.get("perplexity", [])},
    }


def table(data: dict) -> str:
    import pandas as pd

    from benchmarks.docs import markdown  # the docs renderer imports this module

    rows = [
        {
            "model": f"{m['model']} {m['init']} B={m['loops']}",
            "uptrain / exit post-train tokens": f"{m['uptrain_tokens']:,} / {m['post_tokens']:,} ({m['early_exit']})",
            "held-out ppl per exit loop": " / ".join(f"{m['ppl'][str(b)]:.1f}" for b in range(1, m["loops"] + 1)),
            "oracle: exit at loop 1": f"{m['oracle_exit_frac_loop1']:.3f}",
            "oracle: mean exit loop": f"{m['oracle_mean_exit_loop']:.2f}",
            "head AUC per loop": " / ".join(f"{a:.3f}" for a in m["auc"]),
            "head thresholds per loop": thresholds_text(m["thresholds"]),
            "learned: exit at loop 1": f"{m['learned_exit_frac_loop1']:.3f}",
            "learned: mean exit loop": f"{m['learned_mean_exit_loop']:.2f}",
            "learned: agreement (target)": f"{m['learned_agreement']:.3f} ({m['target_agreement']:g})",
            "held-out tokens": m["heldout_tokens"],
        }
        for m in data["rows"]
    ]
    return markdown(pd.DataFrame(rows))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="post-trained run dirs (with model/exit_head.json)")
    args = parser.parse_args(argv)
    collected = [collect(run) for run in args.runs]
    out = RESULTS / "exit_models.json"
    # models collected before (their runs may be gone from this machine; their files stay) keep their rows
    names = {m["name"] for m in collected}
    kept = [m for m in json.loads(out.read_text())["rows"] if m["name"] not in names] if out.is_file() else []
    models = kept + collected
    out.write_text(json.dumps({"benchmark": "exit_models", "rows": models}, indent=1))
    print(table({"rows": models}))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
