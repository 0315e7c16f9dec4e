"""Measured serving throughput on the real gemma-3-270m: vanilla static batching and continuous
sequence-wise batching (CSB) of the full model vs continuous depth-wise batching (CDB) of its recursive
B=2 conversion, with no exit, confidence exits, and oracle exits replayed from teacher-forced trajectories.

Requests are short prompts cut from the held-out text; each asks for a seeded number of new tokens. Every
engine serves the same requests with the same number of slots, greedily, on this CPU in fp32. Prints the
table (tokens/s, ratios vs vanilla and vs CSB), the exit-loop histograms, and saves
``benchmarks/results/serving.json``; ``--full-run``/``--recursive-run`` also add the rows to those runs'
records (the full model's rows and the recursive model's rows).

    OMP_NUM_THREADS=1 python -m benchmarks.serving     # ~8 min on a loaded 2-core CPU
"""

from __future__ import annotations

import argparse
import copy
import statistics
from dataclasses import dataclass, field

import torch

from benchmarks.common import report, timeit
from rrt.assets import load_pretrained, load_tokenizer
from rrt.data import load_documents
from rrt.recursive import RecursionSpec, convert_to_recursive
from rrt.serving import (
    ConfidenceExit,
    DepthStack,
    Engine,
    ExitPolicy,
    FullDepth,
    OracleExit,
    Request,
    agreement,
    confidence_exits,
    exit_summary,
    exit_trajectories,
)
from rrt.serving.records import throughput_row, write_throughput
from rrt.serving.stack import ATTENTIONS
from rrt.serving.workload import oracle_schedule, text_requests

THRESHOLDS = (0.5, 0.7, 0.8, 0.9)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma3_270m")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--min-new", type=int, default=12)
    parser.add_argument("--max-new", type=int, default=28)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per setup; the median is reported")
    parser.add_argument("--threshold", type=float, default=0.8, help="confidence exit threshold for the CDB run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads; more than the free cores makes OpenMP threads spin-wait on a shared CPU",
    )
    parser.add_argument("--full-run", help="run dir of the full model: add the static/CSB rows to its record")
    parser.add_argument("--recursive-run", help="run dir of the recursive model: add the CDB rows to its record")
    return parser.parse_args(argv)


@dataclass
class Setup:
    name: str
    model: object
    policy: ExitPolicy
    batching: str  # static | csb | cdb
    options: dict = field(default_factory=dict)  # head_batch, attention


def measure(setups: list[Setup], requests: list[Request], args) -> list[dict]:
    """Rounds of every setup in turn (load from other processes hits all alike); the median round's row."""
    engines = []
    for setup in setups:
        scheduling = "static" if setup.batching == "static" else "continuous"
        engine = Engine(setup.model, setup.policy, max_batch=args.max_batch, scheduling=scheduling, **setup.options)
        engine.generate([Request(-1, requests[0].prompt, 2)])  # warm-up
        engines.append(engine)
    runs: dict[str, list] = {s.name: [] for s in setups}
    for round_ in range(args.rounds):
        for setup, engine in zip(setups, engines):
            outputs, stats = engine.generate(requests)
            runs[setup.name].append((stats, outputs))
            print(
                f"  round {round_ + 1} {setup.name}: {stats.tokens_per_s:.1f} tok/s ({stats.seconds:.1f} s)", flush=True
            )
    reference = runs[setups[2].name][0][1]  # recursive, all loops: what early exits may change
    rows = []
    for setup, engine in zip(setups, engines):
        ranked = sorted(runs[setup.name], key=lambda run: run[0].tokens_per_s)
        stats, outputs = ranked[len(ranked) // 2]
        same = sum(a == b for r in requests for a, b in zip(outputs[r.rid], reference[r.rid])) / stats.tokens
        rows.append(
            throughput_row(
                setup.batching,
                setup.policy.describe(),
                stats,
                args.max_batch,
                len(requests),
                name=setup.name,
                tokens_per_s_rounds=[run[0].tokens_per_s for run in runs[setup.name]],
                head_batch=engine.head_batch,
                attention=engine.attention,
                head_calls=stats.head_calls,
                prefill_s=stats.prefill_s,
                block_s=stats.block_s,
                head_s=stats.head_s,
                propagate_s=stats.propagate_s,
                exit_hist={str(b): n for b, n in sorted(stats.exit_loops.items())},
                same_tokens_as_all_loops=same if setup.model is setups[2].model else None,
            )
        )
    return rows


def attention_step_times(model, args, repeats: int = 7) -> dict[str, float]:
    """Median seconds of one decode step (K shared layers, ``max_batch`` rows at loops 0/1 and positions spread
    over the request lengths) with padded vs per-item attention, alternated so that machine load hits both."""
    stack = DepthStack(model)
    rows = args.max_batch
    pool = stack.new_pool(rows, args.prompt_tokens + args.max_new)
    generator = torch.Generator().manual_seed(args.seed)
    hidden = torch.randn(rows, 1, model.config.hidden_size, generator=generator)
    slots, loops = torch.arange(rows), torch.arange(rows) % stack.loops
    positions = torch.randint(args.prompt_tokens, args.prompt_tokens + args.max_new, (rows, 1), generator=generator)

    def step() -> None:
        out = hidden
        for i in range(stack.shared):
            out = stack.run_shared_layer(i, out, slots, loops, positions, pool)

    times: dict[str, list[float]] = {kind: [] for kind in ATTENTIONS}
    with torch.inference_mode():
        for _ in range(repeats):
            for kind in ATTENTIONS:
                with stack.attention(kind):
                    times[kind].append(timeit(step, repeats=1, warmup=1))
    return {kind: statistics.median(values) for kind, values in times.items()}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(args.model)
    full = load_pretrained(args.model)
    recursive = convert_to_recursive(copy.deepcopy(full), RecursionSpec(loops=2, init="stepwise"))
    requests, docs = text_requests(
        tokenizer, load_documents("heldout"), args.requests, args.prompt_tokens, args.min_new, args.max_new, args.seed
    )

    print("exit trajectories (teacher-forced over the requests' documents)...", flush=True)
    length = args.prompt_tokens + args.max_new
    trajectories = exit_trajectories(recursive, tokenizer, docs, max_tokens=length)
    oracle = [t.oracle for t in trajectories]
    exits = {"oracle": {**exit_summary(oracle, 2), "agreement": agreement(trajectories, oracle)}}
    for threshold in THRESHOLDS:
        chosen = [confidence_exits(t, threshold) for t in trajectories]
        exits[f"confidence>={threshold:g}"] = {**exit_summary(chosen, 2), "agreement": agreement(trajectories, chosen)}

    attention = attention_step_times(recursive, args)
    print(
        "decode step (9 shared layers, batch %d): padded %.1f ms, per-item %.1f ms"
        % (args.max_batch, 1e3 * attention["padded"], 1e3 * attention["per_item"]),
        flush=True,
    )
    print("serving...", flush=True)
    oracle_policy = OracleExit(oracle_schedule(trajectories, requests))
    batch = args.max_batch
    rows = measure(
        [
            Setup("full static (vanilla)", full, FullDepth(), "static"),
            Setup("full CSB", full, FullDepth(), "csb"),
            Setup("CDB no exit", recursive, FullDepth(), "cdb"),
            Setup(f"CDB confidence>={args.threshold:g}", recursive, ConfidenceExit(args.threshold), "cdb"),
            Setup("CDB oracle (ideal)", recursive, oracle_policy, "cdb"),
            Setup(f"CDB oracle (ideal), head batch {batch}", recursive, oracle_policy, "cdb", {"head_batch": batch}),
        ],
        requests,
        args,
    )
    vanilla, csb = rows[0]["tokens_per_s"], rows[1]["tokens_per_s"]
    vanilla_block, csb_block = rows[0]["block_tokens_per_s"], rows[1]["block_tokens_per_s"]
    for row in rows:
        row["vs_vanilla"], row["vs_csb"] = row["tokens_per_s"] / vanilla, row["tokens_per_s"] / csb
        row["block_vs_vanilla"], row["block_vs_csb"] = (
            row["block_tokens_per_s"] / vanilla_block,
            row["block_tokens_per_s"] / csb_block,
        )

    print("\nexit loops, teacher-forced over the documents (recursive B=2, stepwise, not uptrained):")
    for policy, summary in exits.items():
        print(
            f"  {policy}: loop1 {summary['exit_frac_loop1']:.3f}, loop2 {summary['exit_frac_loop2']:.3f}, "
            f"agreement with final {summary['agreement']:.3f}"
        )
    print()
    columns = [
        "name",
        "tokens_per_s",
        "vs_vanilla",
        "vs_csb",
        "block_tokens_per_s",
        "block_vs_vanilla",
        "block_vs_csb",
        "mean_exit_loop",
        "mean_batch",
        "head_calls",
        "seconds",
        "block_s",
        "head_s",
        "propagate_s",
        "prefill_s",
        "same_tokens_as_all_loops",
    ]
    setting = {
        "model": args.model,
        "requests": len(requests),
        "max_batch": args.max_batch,
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": [args.min_new, args.max_new],
        "rounds": args.rounds,
        "threads": args.threads,
        "confidence_threshold": args.threshold,
        "loops": 2,
        "init": "stepwise",
    }
    report(
        "serving",
        rows,
        columns,
        extra={"setting": setting, "teacher_forced_exits": exits, "attention_step_s": attention},
    )
    if args.full_run:
        write_throughput(args.full_run, [r for r in rows if r["batching"] != "cdb"])
    if args.recursive_run:
        write_throughput(args.recursive_run, [r for r in rows if r["batching"] == "cdb"])


if __name__ == "__main__":
    main()
