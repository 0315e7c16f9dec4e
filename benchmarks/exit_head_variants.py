"""Which exit head exits earliest: ``exit_head.inputs`` x width x epochs x ``thresholds`` on one early-exit model.

Every head is fitted on the same teacher-forced windows of the corpus' train split (``fit_on_features``, as
``rrt-exit-head`` does), its thresholds calibrated per loop and shared to the same target agreement on the same
held-back windows, then judged on held-out text it never saw: the AUC per loop, and the mean exit loop and
final-loop agreement its thresholds give there. The features are computed once (``hidden+change`` holds ``hidden``
as its first half). ``ExitHeadFit``'s defaults are the variant with the lowest held-out mean exit loop at the target
agreement (docs/serving.md).

    python -m benchmarks.exit_head_variants --run <post-trained run dir> [--tokens 65536] [--heldout-tokens 16384]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import torch
from omegaconf import OmegaConf

from benchmarks.common import report, thresholds_text
from benchmarks.exit_models import name_of
from rrt.data import load_documents
from rrt.factory.targets import load_target
from rrt.serving.exit_head import (
    THRESHOLDS,
    ExitHeadFit,
    auc,
    calibrate,
    fit_on_features,
    head_scores,
    outcome,
    per_loop_thresholds,
    teacher_forced_features,
    token_windows,
)

# (inputs, width, epochs): today's default size at both inputs, then a wider, longer-fitted head at both
VARIANTS = [("hidden", 128, 4), ("hidden+change", 128, 4), ("hidden", 256, 8), ("hidden+change", 256, 8)]


def features_of(inputs: str, features: tuple[list[torch.Tensor], torch.Tensor], hidden_size: int):
    """``hidden+change`` features narrowed to what ``inputs`` reads."""
    per_loop, agrees = features
    return ([x[:, :hidden_size] for x in per_loop] if inputs == "hidden" else per_loop), agrees


def best(rows: list[dict], target: float) -> dict:
    """The variant exiting earliest on held-out text among those keeping the target agreement there (all, if none
    does: then the closest to it)."""
    keeping = [r for r in rows if r["heldout_agreement"] >= target]
    if keeping:
        return min(keeping, key=lambda r: r["heldout_mean_exit_loop"])
    return max(rows, key=lambda r: r["heldout_agreement"])


def table(data: dict) -> str:
    """The variants on held-out text, then which one wins (docs/serving.md)."""
    lines = [
        "| inputs | width | epochs | AUC per loop (held-out) | thresholds | per loop | mean exit loop | agreement |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in data["rows"]:
        aucs = " / ".join(f"{a:.3f}" for a in row["heldout_auc"])
        lines.append(
            f"| {row['inputs']} | {row['width']} | {row['epochs']} | {aucs} | {row['thresholds']} | "
            f"{thresholds_text(row['threshold_values'])} | {row['heldout_mean_exit_loop']:.3f} | "
            f"{row['heldout_agreement']:.3f} |"
        )
    winner = best(data["rows"], data["target_agreement"])
    lines += [
        "",
        f"{data['model']}: fitted on {data['fit_tokens']:,} teacher-forced tokens, calibrated to "
        f"{data['target_agreement']} agreement on {data['calibration_tokens']:,}, judged on {data['heldout_tokens']:,} "
        f"held-out tokens (oracle mean exit loop {data['oracle_mean_exit_loop']:.3f}). Earliest exits at the target: "
        f"**inputs={winner['inputs']}, width={winner['width']}, epochs={winner['epochs']}, "
        f"thresholds={winner['thresholds']}**.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="an early-exit post-trained run dir")
    parser.add_argument("--tokens", type=int, default=ExitHeadFit.tokens, help="fit + calibration tokens")
    parser.add_argument("--heldout-tokens", type=int, default=16384)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--window", type=int, default=ExitHeadFit.window)
    parser.add_argument("--output", default="exit_head_variants")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tokenizer, record = load_target(OmegaConf.create({"run": str(args.run), "device": "cpu"}))
    model.eval()
    hidden_size = model.get_input_embeddings().weight.shape[1]
    base = ExitHeadFit(tokens=args.tokens, window=args.window)
    windows = token_windows(tokenizer, load_documents("train"), base.window, base.tokens)
    order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(base.seed)).tolist()
    held = max(1, round(len(windows) * base.calibration))
    train = teacher_forced_features(model, [windows[i] for i in order[held:]], "hidden+change")
    calibration = teacher_forced_features(model, [windows[i] for i in order[:held]], "hidden+change")
    heldout_windows = token_windows(tokenizer, load_documents("heldout"), base.window, args.heldout_tokens)
    heldout = teacher_forced_features(model, heldout_windows, "hidden+change")
    rows = []
    for inputs, width, epochs in VARIANTS:
        fit = replace(base, inputs=inputs, width=width, epochs=epochs)
        start = time.perf_counter()
        head, fitted = fit_on_features(
            features_of(inputs, train, hidden_size),
            features_of(inputs, calibration, hidden_size),
            hidden_size,
            fit,
            torch.Generator().manual_seed(fit.seed),
        )
        seconds = time.perf_counter() - start
        x, agrees = features_of(inputs, heldout, hidden_size)
        scores = head_scores(head, x)
        calibration_scores = head_scores(head, features_of(inputs, calibration, hidden_size)[0])
        shared = calibrate(calibration_scores, calibration[1], fit.target_agreement)
        for mode in THRESHOLDS:
            thresholds = head.thresholds if mode == "per_loop" else per_loop_thresholds(shared, head.loops)
            learned = outcome(scores, agrees, thresholds)
            rows.append(
                {
                    "inputs": inputs,
                    "width": width,
                    "epochs": epochs,
                    "thresholds": mode,
                    "threshold_values": thresholds,
                    "calibration_auc": fitted["calibration"]["auc"],
                    "heldout_auc": [auc(s, a) for s, a in zip(scores, agrees)],
                    "heldout_mean_exit_loop": learned["mean_exit_loop"],
                    "heldout_agreement": learned["agreement"],
                    "fit_seconds": seconds,
                }
            )
    oracle = outcome(heldout[1].float(), heldout[1], 1.0)
    extra = {
        "model": name_of(record.data["setting"]),
        "fit_tokens": train[1].shape[1],
        "calibration_tokens": calibration[1].shape[1],
        "heldout_tokens": heldout[1].shape[1],
        "target_agreement": base.target_agreement,
        "oracle_mean_exit_loop": oracle["mean_exit_loop"],
    }
    columns = ["inputs", "width", "epochs", "thresholds", "heldout_auc", "heldout_mean_exit_loop", "heldout_agreement"]
    report(args.output, rows, columns, extra)
    print(table({"rows": rows, **extra}))


if __name__ == "__main__":
    main()
