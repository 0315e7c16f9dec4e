"""Simulated serving throughput, the paper's App. K method, with costs measured on this machine.

For each model: the full model and its recursive Stepwise conversion (fresh, neither uptrained nor early-exit
trained), per-call costs measured at batch sizes up to what a memory cap allows each of them, teacher-forced
oracle exit trajectories of the recursive model over held-out documents, and a queue of requests replaying
them. Simulated: vanilla static batching and CSB of the full model, CDB of the recursive model without exits
and with oracle exits (at the full model's batch: depth-wise batching and exits only; at its own memory-capped
batch: plus the memory a smaller model frees), in ``paper`` mode (decode blocks only) and ``full`` mode
(head, embedding, prefill and state propagation too). Prints the table beside the paper's x2.66 vs vanilla /
x1.88 vs CSB and saves ``benchmarks/results/simulate.json`` (``python -m benchmarks.docs`` puts it in
docs/serving.md).

    OMP_NUM_THREADS=1 python -m benchmarks.simulate     # ~6 min on a loaded 2-core CPU
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch

from benchmarks.common import portable, report
from benchmarks.exit_models import full_model_name
from rrt.assets import load_pretrained, load_tokenizer
from rrt.data import load_documents
from rrt.records import RunRecord
from rrt.recursive import RecursionSpec, convert_to_recursive
from rrt.recursive.io import load_converted
from rrt.recursive.model import RecursiveModel
from rrt.serving import FullDepth, exit_summary, exit_trajectories
from rrt.serving.records import throughput_row
from rrt.serving.simulate import (
    MODES,
    Curve,
    measure_costs,
    memory_of,
    simulate,
    trajectory_queue,
)

# Fig. 8 / Table K.2: recursive Gemma 2B (B=2, Stepwise, 60B tokens + KD, Agg(0.1) early-exit post-training),
# CDB with oracle exits, vs vanilla Gemma (static) and vanilla + CSB; A100 40 GB, prefix 512 / decode 2048.
PAPER = {"vs_vanilla": 2.66, "vs_csb": 1.88, "source": "Fig. 8 / Table K.2, recursive Gemma 2B B=2 Stepwise, CDB"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["gemma3_270m", "smollm2_135m"], help="fresh conversions")
    parser.add_argument("--loops", type=int, default=2, help="B of the fresh conversions")
    parser.add_argument(
        "--runs", nargs="+", default=[], help="early-exit-trained run dirs to simulate instead of fresh conversions"
    )
    parser.add_argument("--output", default="simulate", help="results file name in benchmarks/results/")
    parser.add_argument("--documents", type=int, default=12, help="held-out documents for the exit trajectories")
    parser.add_argument(
        "--requests", type=int, default=512, help="simulated queue (request r replays document r mod D)"
    )
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--min-new", type=int, default=64)
    parser.add_argument("--max-new", type=int, default=192)
    parser.add_argument("--memory-gib", type=float, default=1.5, help="memory cap: weights + every request's KV cache")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measured point (the fastest counts)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args(argv)


def batch_sizes(*largest: int) -> list[int]:
    """Powers of two below the largest batch, and the batches simulated (the cost curve's points)."""
    top = max(largest)
    return sorted({2**i for i in range(top.bit_length()) if 2**i < top} | set(largest))


def recursive_models(args: argparse.Namespace) -> list[tuple[str, str, torch.nn.Module]]:
    """(label, full model name, recursive model): the runs' early-exit-trained models, else fresh conversions."""
    if not args.runs:
        spec = RecursionSpec(loops=args.loops, init="stepwise")
        return [(name, name, convert_to_recursive(load_pretrained(name), spec)) for name in args.models]
    out = []
    for run in map(Path, args.runs):
        setting = RunRecord.load(run).data["setting"]
        name = full_model_name(setting)
        label = f"{name} {setting['init']} B={setting['loops']}, early-exit trained"
        out.append((label, name, load_converted(run / "model").eval()))
    return out


def simulate_model(label: str, name: str, recursive: torch.nn.Module, args) -> tuple[list[dict], dict]:
    """The simulated rows of one model and what they rest on (batches, exits, cost curves)."""
    tokenizer, full = load_tokenizer(name), load_pretrained(name)
    loops = RecursiveModel(recursive).loops
    max_len = args.prompt_tokens + args.max_new
    documents = [d for d in load_documents("heldout") if len(tokenizer(d).input_ids) >= max_len][: args.documents]
    print(f"{label}: exit trajectories over {len(documents)} documents...", flush=True)
    trajectories = exit_trajectories(recursive, tokenizer, documents, max_tokens=max_len)
    requests, oracle = trajectory_queue(
        trajectories, args.prompt_tokens, args.requests, args.min_new, args.max_new, args.seed
    )
    cap = int(args.memory_gib * 2**30)
    full_batch, recursive_batch = (memory_of(m).max_batch(cap, max_len) for m in (full, recursive))
    print(f"{label}: measuring costs (batch {full_batch} full, {recursive_batch} recursive)...", flush=True)
    full_costs, recursive_costs = measure_costs(
        [full, recursive], batch_sizes(full_batch, recursive_batch), [args.prompt_tokens], max_len, args.repeats
    )
    setups = [
        ("vanilla static", "static", full_costs, FullDepth(), full_batch),
        ("CSB", "csb", full_costs, FullDepth(), full_batch),
        ("CDB no exit", "cdb", recursive_costs, FullDepth(), recursive_batch),
        ("CDB oracle, full model's batch", "cdb", recursive_costs, oracle, full_batch),
        ("CDB oracle", "cdb", recursive_costs, oracle, recursive_batch),
    ]
    rows = []
    for mode in MODES:
        mode_rows = []
        for setup, batching, costs, policy, batch in setups:
            stats = simulate(
                costs,
                requests,
                policy,
                max_batch=batch,
                batching=batching,
                mode=mode,
            )
            mode_rows.append(
                throughput_row(
                    batching,
                    policy.describe(),
                    stats,
                    batch,
                    len(requests),
                    model=label,
                    setup=setup,
                    mode=mode,
                    simulated=True,
                    steps=stats.steps,
                    block_s=stats.block_s,
                    head_s=stats.head_s,
                    prefill_s=stats.prefill_s,
                    propagate_s=stats.propagate_s,
                )
            )
        vanilla, csb = mode_rows[0]["tokens_per_s"], mode_rows[1]["tokens_per_s"]
        for row in mode_rows:
            row["vs_vanilla"], row["vs_csb"] = row["tokens_per_s"] / vanilla, row["tokens_per_s"] / csb
        rows += mode_rows
    basis = {
        "memory_gib": args.memory_gib,
        "max_batch": {"full": full_batch, "recursive": recursive_batch},
        "loops": loops,
        "exits": exit_summary([t.oracle for t in trajectories], loops),
        "documents": len(documents),
        "costs": {"full": asdict(full_costs), "recursive": asdict(recursive_costs)},
    }
    return rows, basis


def table(data: dict) -> str:
    """The docs tables: what each model's simulation rests on, then paper- and full-mode tokens/s and ratios
    per setup beside the paper's."""
    from benchmarks.docs import markdown  # the docs renderer imports this module

    basis, max_len = [], data["setting"]["prompt_tokens"] + data["setting"]["max_new"]
    for name, b in data["basis"].items():
        full, recursive = b["costs"]["full"], b["costs"]["recursive"]
        memory = full["memory"]
        top = b["max_batch"]

        def per_token(costs: dict, batch: int) -> str:  # all loops of one token, no exit
            return f"{1e3 * costs['loops'] * Curve(tuple(map(tuple, costs['block']['points'])))(batch) / batch:.1f}"

        basis.append(
            {
                "model": name,
                "cap GiB": f"{b['memory_gib']:g}",
                "weights MiB full / recursive": f"{memory['weight_bytes'] / 2**20:.0f} / "
                f"{recursive['memory']['weight_bytes'] / 2**20:.0f}",
                "KV MiB per request": f"{memory['kv_bytes_per_position'] * max_len / 2**20:.1f}",
                "max batch full / recursive": f"{top['full']} / {top['recursive']}",
                "exit at loop 1": f"{b['exits']['exit_frac_loop1']:.3f}",
                "block ms/token full, batch 1 / max": f"{per_token(full, 1)} / {per_token(full, top['full'])}",
                "recursive (all loops), batch 1 / max": f"{per_token(recursive, 1)} / "
                f"{per_token(recursive, top['recursive'])}",
            }
        )
    frame = pd.DataFrame(data["rows"])
    wide = frame.pivot_table(
        index=["model", "setup", "max_batch", "mean_exit_loop"],
        columns="mode",
        values=["tokens_per_s", "vs_vanilla", "vs_csb"],
        sort=False,
    ).reset_index()
    out = pd.DataFrame(
        {
            "model": wide["model"],
            "setup": wide["setup"],
            "max batch": wide["max_batch"].astype(object),  # the paper's row below leaves it blank
            "mean exit loop": wide["mean_exit_loop"].map("{:.2f}".format),
        }
    )
    for mode in MODES:
        out[f"{mode}: tok/s"] = wide[("tokens_per_s", mode)].map("{:.1f}".format)
        out[f"{mode}: x vanilla"] = wide[("vs_vanilla", mode)].map("{:.2f}".format)
        out[f"{mode}: x CSB"] = wide[("vs_csb", mode)].map("{:.2f}".format)
    paper = data["paper"]
    out.loc[-1] = [
        "Gemma 2B (paper)",
        "CDB oracle",
        "",
        "",
        "",
        f"{paper['vs_vanilla']:.2f}",
        f"{paper['vs_csb']:.2f}",
        "",
        "",
        "",
    ]
    setting = data["setting"]
    models = (
        "the early-exit-trained models of benchmarks/results/exit_models/"
        if setting.get("runs")
        else f"B={setting['loops']} Stepwise conversions (fresh)"
    )
    sources = ", ".join(f"{b['documents']} documents ({name})" for name, b in data["basis"].items())
    line = (
        f"Setting: {models}, {setting['requests']} requests with "
        f"{setting['prompt_tokens']}-token prompts and {setting['min_new']}-{setting['max_new']} new tokens, "
        f"exits replayed from {sources}, "
        f"fastest of {setting['repeats']} timings per point, {setting['threads']} thread(s), "
        f"torch {data['machine']['torch']}."
    )
    return "\n\n".join([line, markdown(pd.DataFrame(basis)), markdown(out.sort_index().reset_index(drop=True))])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rows, basis = [], {}
    for label, name, recursive in recursive_models(args):
        model_rows, basis[label] = simulate_model(label, name, recursive, args)
        rows += model_rows
    setting = {
        key: getattr(args, key)
        for key in (
            "loops",
            "requests",
            "prompt_tokens",
            "min_new",
            "max_new",
            "memory_gib",
            "repeats",
            "seed",
            "threads",
        )
    }
    setting["runs"] = [portable(str(Path(run).resolve()), Path(run).resolve().parent.parent) for run in args.runs]
    columns = [
        "model",
        "setup",
        "mode",
        "max_batch",
        "tokens_per_s",
        "vs_vanilla",
        "vs_csb",
        "mean_exit_loop",
        "mean_batch",
        "steps",
    ]
    report(args.output, rows, columns, extra={"setting": setting, "paper": PAPER, "basis": basis})
    print(f"paper: x{PAPER['vs_vanilla']} vs vanilla, x{PAPER['vs_csb']} vs CSB ({PAPER['source']})")


if __name__ == "__main__":
    main()
