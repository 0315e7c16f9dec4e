"""Measured vs simulated serving throughput on one workload: vanilla static batching and continuous sequence-wise
batching (CSB) of the full model against continuous depth-wise batching (CDB) of a recursive model without exits,
replaying the teacher-forced oracle exit pattern, with the live learned exit head, with live confidence exits, and
(optionally) a relaxed recursive model replaying its own oracle pattern.

Every setup serves the same requests (prompts cut from held-out text, a seeded number of new tokens each) at each
``--batches`` size, in interleaved rounds (this CPU is shared: load hits every setup alike); ratios vs vanilla and
CSB are taken within a round, and the median and spread over rounds are reported. Beside each measured row: the
simulated figure for the same requests, batch and exit pattern (``rrt.serving.simulate``, costs measured here), in
full mode (everything counted) and the paper's mode (decode blocks only); the teacher-forced agreement of the
policy with the final loop over the requests' documents; the share of generated tokens equal to the all-loops
engine's; and a profile (block, head, prefill, propagation, exit decisions, scheduling overhead).

    OMP_NUM_THREADS=1 python -m benchmarks.serving --run <early-exit-trained run dir> --output serving_smollm2_b2
    OMP_NUM_THREADS=1 python -m benchmarks.serving --model gemma3_270m    # a fresh Stepwise conversion instead

Saves ``benchmarks/results/<output>.json``; ``python -m benchmarks.docs`` renders it into docs/serving.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmarks.common import portable, report, thresholds_text
from rrt.assets import load_pretrained, load_tokenizer
from rrt.data import load_documents
from rrt.records import RunRecord
from rrt.recursive import LoRASpec, RecursionSpec, convert_to_recursive
from rrt.recursive.io import load_converted
from rrt.recursive.model import RecursiveModel
from rrt.serving import (
    ConfidenceExit,
    Engine,
    ExitHead,
    ExitPolicy,
    FullDepth,
    LearnedExit,
    ReplayExit,
    Request,
    agreement,
    confidence_exits,
    exit_summary,
    learned_exits,
    window_trajectories,
)
from rrt.serving.adapters import ADAPTER_CALLS
from rrt.serving.records import throughput_row, write_throughput
from rrt.serving.simulate import MODES, measure_costs, simulate
from rrt.serving.workload import exit_schedule, text_requests

ROOT = Path(__file__).resolve().parents[1]
FULL_RECORD = "serving-{model}-full"  # beside the --run dir: the unconverted pretrained model's throughput rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2_135m", help="the full-size model (embedded name)")
    parser.add_argument("--run", help="run dir of the recursive model (its model/ and exit head); default: convert")
    parser.add_argument("--loops", type=int, default=2, help="B of the fresh conversion when --run is not given")
    parser.add_argument("--relaxed-rank", type=int, default=64, help="a relaxed Stepwise conversion's rank; 0: none")
    parser.add_argument(
        "--relaxed-adapters",
        nargs="+",
        choices=ADAPTER_CALLS,
        default=["stacked"],
        help="how the relaxed model's loops run: stacked (one call, the paper's serving) and/or grouped (per loop)",
    )
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--min-new", type=int, default=16)
    parser.add_argument("--max-new", type=int, default=48)
    parser.add_argument("--batches", type=int, nargs="+", default=[4, 8, 16], help="max batch sizes (slots)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; median and spread reported")
    parser.add_argument(
        "--head-batch-slots",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the replay and learned setups with head batch = slots (the head waits for every slot)",
    )
    parser.add_argument(
        "--exit-setups",
        nargs="+",
        choices=("replay", "learned", "confidence"),
        default=["replay", "learned", "confidence"],
        help="which CDB exit setups to run beside vanilla, CSB and CDB without exits",
    )
    parser.add_argument("--confidence", type=float, default=0.8, help="threshold of the confidence policy")
    parser.add_argument("--repeats", type=int, default=3, help="timings per point of the simulator's cost curves")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (more than the free cores spin-wait)")
    parser.add_argument("--output", default="serving", help="results file name in benchmarks/results/")
    parser.add_argument(
        "--record",
        action="store_true",
        help="also add the rows to run records: CDB rows of the --run model to its record, the full model's rows "
        f"to a serving record beside it ({FULL_RECORD.format(model='<model>')})",
    )
    return parser.parse_args(argv)


@dataclass
class Served:
    """A model to serve and what its policies need: its exit trajectories over the requests' documents."""

    label: str
    model: torch.nn.Module
    trajectories: list = field(default_factory=list)
    exit_head: ExitHead | None = None
    source: dict = field(default_factory=dict)


@dataclass
class Setup:
    name: str
    served: Served
    policy: ExitPolicy
    batching: str
    exits: list[torch.Tensor] | None  # the policy's teacher-forced exit loops per document (None: all loops)
    batched_head: bool = False  # exited tokens wait until every slot awaits one head call (head_batch = slots);
    # False: the head runs in every step that has exits (head_batch = 1)
    adapters: str = "stacked"  # a relaxed model's loops: one stacked call or one call per loop (grouped)

    def head_batch(self, slots: int) -> int:
        return slots if self.batched_head else 1


def load_served(args, full: torch.nn.Module) -> tuple[Served, Served | None]:
    """The recursive model (a run's, with its exit head, or a fresh conversion) and the relaxed one."""
    if args.run:
        run = Path(args.run)
        record = RunRecord.load(run).data
        recursive = Served(
            f"{record['setting']['init']} B={record['setting']['loops']}, early-exit trained",
            load_converted(run / "model").eval(),
            exit_head=ExitHead.load(run / "model"),
            source={
                "run": _relative(run),
                "setting": json.loads(portable(json.dumps(record["setting"]), run.parent.parent)),
                "config_hash": record.get("config_hash"),
            },
        )
    else:
        spec = RecursionSpec(loops=args.loops, init="stepwise")
        recursive = Served(f"stepwise B={args.loops}, fresh conversion", _converted(full, spec))
    relaxed = None
    if args.relaxed_rank:
        loops = RecursiveModel(recursive.model).loops
        spec = RecursionSpec(loops=loops, init="stepwise", lora=LoRASpec(rank=args.relaxed_rank))
        relaxed = Served(f"stepwise B={loops} r={args.relaxed_rank}, fresh conversion", _converted(full, spec))
    return recursive, relaxed


def _converted(full: torch.nn.Module, spec: RecursionSpec) -> torch.nn.Module:
    return convert_to_recursive(copy.deepcopy(full), spec).eval()


def _relative(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def setups_for(args, full: Served, recursive: Served, relaxed: Served | None, requests) -> list[Setup]:
    oracle = [t.oracle for t in recursive.trajectories]
    out = [
        Setup("vanilla static", full, FullDepth(), "static", None),
        Setup("CSB", full, FullDepth(), "csb", None),
        Setup("CDB no exit", recursive, FullDepth(), "cdb", None),
    ]
    replay = ReplayExit(exit_schedule(oracle, requests))
    if "replay" in args.exit_setups:
        out += [Setup("CDB replay(oracle)", recursive, replay, "cdb", oracle)]
    if "replay" in args.exit_setups and args.head_batch_slots:
        name = "CDB replay(oracle), head batch = slots"
        out.append(Setup(name, recursive, replay, "cdb", oracle, batched_head=True))
    if recursive.exit_head is not None and "learned" in args.exit_setups:
        head = recursive.exit_head
        learned = [learned_exits(t, head.thresholds) for t in recursive.trajectories]
        out.append(Setup("CDB learned (live)", recursive, LearnedExit(head), "cdb", learned))
        if args.head_batch_slots:
            name = "CDB learned (live), head batch = slots"
            out.append(Setup(name, recursive, LearnedExit(head), "cdb", learned, batched_head=True))
    if "confidence" in args.exit_setups:
        confident = [confidence_exits(t, args.confidence) for t in recursive.trajectories]
        name = f"CDB confidence>={args.confidence:g} (live)"
        out.append(Setup(name, recursive, ConfidenceExit(args.confidence), "cdb", confident))
    if relaxed is not None:
        relaxed_oracle = [t.oracle for t in relaxed.trajectories]
        policy = ReplayExit(exit_schedule(relaxed_oracle, requests))
        for adapters in args.relaxed_adapters:
            name = "CDB relaxed replay(oracle)" + ("" if adapters == "stacked" else f", {adapters} adapters")
            out.append(Setup(name, relaxed, policy, "cdb", relaxed_oracle, adapters=adapters))
    return out


def measure(setups: list[Setup], requests: list[Request], batches: list[int], rounds: int) -> dict:
    """Every (setup, batch) once per round, rounds outermost: {(name, batch): [(stats, outputs) per round]}."""
    engines = {}
    for batch in batches:
        for s in setups:
            head_batch = s.head_batch(batch)
            engine = Engine(
                s.served.model,
                s.policy,
                max_batch=batch,
                batching=s.batching,
                head_batch=head_batch,
                adapters=s.adapters,
            )
            engine.generate([Request(-1, requests[0].prompt, 2)])  # warm-up
            engines[s.name, batch] = engine
    runs: dict[tuple[str, int], list] = {key: [] for key in engines}
    for round_ in range(rounds):
        for (name, batch), engine in engines.items():
            outputs, stats = engine.generate(requests)
            runs[name, batch].append((stats, outputs))
            print(f"  round {round_ + 1} batch {batch} {name}: {stats.tokens_per_s:.1f} tok/s", flush=True)
    return runs


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def measured_rows(setups: list[Setup], runs: dict, requests: list[Request], batches: list[int]) -> list[dict]:
    rows = []
    for batch in batches:
        rates = {s.name: [stats.tokens_per_s for stats, _ in runs[s.name, batch]] for s in setups}
        reference = runs["CDB no exit", batch][0][1]  # the all-loops outputs early exits may change
        for s in setups:
            per_round = runs[s.name, batch]
            median = sorted(range(len(per_round)), key=lambda i: per_round[i][0].tokens_per_s)[len(per_round) // 2]
            stats, outputs = per_round[median]
            same = None
            if s.served is setups[2].served:
                same = sum(a == b for r in requests for a, b in zip(outputs[r.rid], reference[r.rid])) / stats.tokens
            vs = {
                base: spread([a / b for a, b in zip(rates[s.name], rates[ref])])
                for base, ref in (("vanilla", "vanilla static"), ("csb", "CSB"))
            }
            rows.append(
                throughput_row(
                    s.batching,
                    s.policy.describe(),
                    stats,
                    batch,
                    len(requests),
                    setup=s.name,
                    model=s.served.label,
                    tokens_per_s_rounds=rates[s.name],
                    vs_vanilla=vs["vanilla"],
                    vs_csb=vs["csb"],
                    head_batch=s.head_batch(batch),
                    adapters=s.adapters,
                    head_calls=stats.head_calls,
                    profile={
                        part: getattr(stats, part)
                        for part in ("block_s", "head_s", "prefill_s", "propagate_s", "policy_s", "overhead_s")
                    },
                    exit_hist={str(b): n for b, n in sorted(stats.exit_loops.items())},
                    same_tokens_as_all_loops=same,
                )
            )
    return rows


def simulated(setups: list[Setup], requests: list[Request], batches: list[int], args, max_len: int) -> dict:
    """{(setup, batch, mode): simulated tokens/s} for the same requests, batches and teacher-forced exit patterns."""
    served = {(id(s.served), s.adapters): s for s in setups}  # a model, and how its relaxed loops run
    print("measuring the simulator's cost curves...", flush=True)
    sizes = sorted({1, *batches})  # the tail of a run has fewer rows than slots
    models, adapters = [s.served.model for s in served.values()], [s.adapters for s in served.values()]
    costs = measure_costs(models, sizes, [args.prompt_tokens], max_len, args.repeats, adapters)
    cost_of = dict(zip(served, costs))
    out = {}
    for s in setups:
        policy = ReplayExit(exit_schedule(s.exits, requests)) if s.exits is not None else FullDepth()
        for batch in batches:
            head_batch = s.head_batch(batch)
            for mode in MODES:
                stats = simulate(
                    cost_of[id(s.served), s.adapters],
                    requests,
                    policy,
                    batch,
                    s.batching,
                    head_batch=head_batch,
                    mode=mode,
                )
                out[s.name, batch, mode] = stats.tokens_per_s
    return out


def teacher_forced(setups: list[Setup]) -> dict:
    """Each policy's exits over the requests' documents: fractions per loop, mean exit loop, agreement."""
    out = {}
    for s in setups:
        if s.exits is None:
            continue
        loops = s.served.trajectories[0].agrees.shape[0] + 1
        out[s.name] = {**exit_summary(s.exits, loops), "agreement": agreement(s.served.trajectories, s.exits)}
    return out


def write_records(args, rows: list[dict], full: Served, recursive: Served) -> None:
    """The recursive model's rows into its run's record; the full model's into a serving record of the pretrained,
    unconverted model (it was never trained: token budget 0), so analysis finds every engine's rows by setting."""
    run = Path(args.run)
    write_throughput(run, [r for r in rows if r["model"] == recursive.label])
    full_dir = run.parent / FULL_RECORD.format(model=args.model)
    if not (full_dir / "record.json").exists():
        setting = {"model": args.model, "variant": "full", "pretrained": True, "loops": 1, "lora_rank": 0}
        setting |= {"distill": "none", "early_exit": "none", "token_budget": 0}
        RunRecord.create(full_dir, status="complete", setting=setting)
    write_throughput(full_dir, [r for r in rows if r["model"] == full.label])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(args.model)
    full = Served(f"{args.model} (full)", load_pretrained(args.model).eval())
    recursive, relaxed = load_served(args, full.model)
    requests, windows = text_requests(
        tokenizer, load_documents("heldout"), args.requests, args.prompt_tokens, args.min_new, args.max_new, args.seed
    )
    max_len = args.prompt_tokens + args.max_new
    print("exit trajectories (teacher-forced over the requests' documents)...", flush=True)
    for served in filter(None, (recursive, relaxed)):
        served.trajectories = window_trajectories(served.model, windows, served.exit_head)
    setups = setups_for(args, full, recursive, relaxed, requests)
    exits = teacher_forced(setups)
    print("serving...", flush=True)
    runs = measure(setups, requests, args.batches, args.rounds)
    rows = measured_rows(setups, runs, requests, args.batches)
    sim = simulated(setups, requests, args.batches, args, max_len)
    for row in rows:
        name, batch = row["setup"], row["max_batch"]
        row["teacher_forced_agreement"] = exits.get(name, {"agreement": 1.0})["agreement"]
        for mode in MODES:
            row[f"sim_{mode}_tokens_per_s"] = sim[name, batch, mode]
            row[f"sim_{mode}_vs_vanilla"] = sim[name, batch, mode] / sim["vanilla static", batch, mode]
            row[f"sim_{mode}_vs_csb"] = sim[name, batch, mode] / sim["CSB", batch, mode]
    printable = [
        {
            **row,
            "x_vanilla": row["vs_vanilla"]["median"],
            "x_csb": row["vs_csb"]["median"],
            "x_csb_range": f"{row['vs_csb']['min']:.2f}-{row['vs_csb']['max']:.2f}",
            **{f"{k}%": 100 * v / row["seconds"] for k, v in row["profile"].items()},
        }
        for row in rows
    ]
    columns = ["setup", "max_batch", "tokens_per_s", "x_vanilla", "x_csb", "x_csb_range", "sim_full_vs_csb"]
    columns += ["sim_paper_vs_csb", "mean_exit_loop", "teacher_forced_agreement", "same_tokens_as_all_loops"]
    columns += [f"{part}%" for part in rows[0]["profile"]]
    setting = {
        "model": args.model,
        "recursive": {"label": recursive.label, **recursive.source},
        "relaxed": relaxed.label if relaxed else None,
        "requests": len(requests),
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": [args.min_new, args.max_new],
        "batches": args.batches,
        "rounds": args.rounds,
        "threads": args.threads,
        "confidence_threshold": args.confidence,
        "exit_setups": args.exit_setups,
        "exit_head_thresholds": recursive.exit_head.thresholds if recursive.exit_head else None,
        "repeats": args.repeats,
    }
    head_report = None
    if args.record:
        if not args.run:
            raise SystemExit("--record needs --run (the run whose record gets the CDB rows)")
        write_records(args, printable, full, recursive)
    if args.run and recursive.exit_head is not None:
        head_report = json.loads((Path(args.run) / "model" / "exit_head.json").read_text())
    report(
        args.output,
        printable,
        columns,
        extra={"setting": setting, "teacher_forced_exits": exits, "exit_head": head_report},
    )


if __name__ == "__main__":
    main()


# issue 18's targets for CDB with an early-exit-trained model, measured on this CPU
TARGETS = {"replay": {"vs_vanilla": 2.0, "vs_csb": 1.6}, "learned": {"vs_csb": 1.5, "agreement": 0.95}}


def verdict(spread: dict, target: float) -> str:
    """met when every round reached the target, not met when none did, inconclusive in between."""
    if spread["min"] >= target:
        return "met"
    return "not met" if spread["max"] < target else "inconclusive"


def targets(rows) -> list[dict]:
    """Each replay and learned row against the targets: the ratios' median (range over rounds) and a verdict."""
    out = []
    for row in rows.itertuples():
        kind = "replay" if "replay(oracle)" in row.setup and "relaxed" not in row.setup else None
        kind = "learned" if row.setup.startswith("CDB learned") else kind
        if kind is None:
            continue
        checks = []
        for key, target in TARGETS[kind].items():
            if key == "agreement":
                met = row.teacher_forced_agreement >= target
                checks.append(
                    f"agreement {row.teacher_forced_agreement:.3f} >= {target}: {'met' if met else 'not met'}"
                )
                continue
            r = getattr(row, key)
            name = "x vanilla" if key == "vs_vanilla" else "x CSB"
            checks.append(f"{name} {r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f}) >= {target}: {verdict(r, target)}")
        out.append({"setup": row.setup, "max batch": row.max_batch, "target checks": "; ".join(checks)})
    return out


def table(data: dict) -> str:
    """The docs tables: measured tokens/s and ratios (median and range over rounds) beside the simulated ratios
    for the same setting, then where the time went, then each policy's teacher-forced exits."""
    import pandas as pd

    from benchmarks.docs import markdown  # the docs renderer imports this module

    rows = pd.DataFrame(data["rows"])

    def ratio(col: str) -> pd.Series:
        return rows[col].map(lambda r: f"{r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f})")

    def maybe(col: str, fmt: str) -> pd.Series:
        return rows[col].map(lambda v: "" if v is None or v != v else fmt.format(v))

    measured = pd.DataFrame(
        {
            "setup": rows["setup"],
            "max batch": rows["max_batch"],
            "tok/s": rows["tokens_per_s"].map("{:.1f}".format),
            "x vanilla": ratio("vs_vanilla"),
            "x CSB": ratio("vs_csb"),
            "simulated full: x vanilla / x CSB": [
                f"{a:.2f} / {b:.2f}" for a, b in zip(rows["sim_full_vs_vanilla"], rows["sim_full_vs_csb"])
            ],
            "simulated paper: x vanilla / x CSB": [
                f"{a:.2f} / {b:.2f}" for a, b in zip(rows["sim_paper_vs_vanilla"], rows["sim_paper_vs_csb"])
            ],
            "measured / simulated full (x vanilla)": [
                f"{m['median'] / f:.2f}" for m, f in zip(rows["vs_vanilla"], rows["sim_full_vs_vanilla"])
            ],
            "mean exit loop": rows["mean_exit_loop"].map("{:.2f}".format),
            "agreement (teacher-forced)": rows["teacher_forced_agreement"].map("{:.3f}".format),
            "same tokens as all loops": maybe("same_tokens_as_all_loops", "{:.2f}"),
        }
    )
    parts = {"block_s": "block", "head_s": "head", "prefill_s": "prefill", "propagate_s": "propagation"}
    parts |= {"policy_s": "exit decisions", "overhead_s": "overhead"}
    profile = pd.DataFrame({"setup": rows["setup"], "max batch": rows["max_batch"]})
    profile["seconds"] = rows["seconds"].map("{:.1f}".format)
    for key, name in parts.items():
        profile[f"{name} %"] = [f"{100 * p[key] / s:.0f}" for p, s in zip(rows["profile"], rows["seconds"])]
    # what one token costs each way: a prompt token in its request's prefill (all depths) vs a generated token's
    # share of the decode blocks (its exits included)
    prompt_tokens = rows["requests"] * data["setting"]["prompt_tokens"]
    profile["prefill ms / prompt token"] = [
        f"{1e3 * p['prefill_s'] / n:.2f}" for p, n in zip(rows["profile"], prompt_tokens)
    ]
    profile["block ms / new token"] = [f"{1e3 * p['block_s'] / n:.2f}" for p, n in zip(rows["profile"], rows["tokens"])]
    exits = pd.DataFrame(
        [{"policy (teacher-forced)": name, **summary} for name, summary in data["teacher_forced_exits"].items()]
    ).drop(columns="tokens")
    setting, recursive = data["setting"], data["setting"]["recursive"]
    line = (
        f"Setting: full model {setting['model']}; recursive model: {recursive['label']}"
        f"{' (' + recursive['run'] + ')' if recursive.get('run') else ''}; relaxed: {setting['relaxed'] or 'none'}; "
        f"{setting['requests']} requests, {setting['prompt_tokens']}-token prompts, "
        f"{setting['new_tokens'][0]}-{setting['new_tokens'][1]} new tokens; {setting['rounds']} interleaved rounds "
        f"(ratios within a round: median (range)); confidence threshold {setting['confidence_threshold']:g}; "
        f"exit head thresholds {thresholds_text(setting['exit_head_thresholds'])}; {setting['threads']} thread(s), "
        f"torch {data['machine']['torch']}."
    )
    checks = markdown(pd.DataFrame(targets(rows)))
    return "\n\n".join([line, markdown(measured), markdown(profile), markdown(exits.round(3)), checks])
