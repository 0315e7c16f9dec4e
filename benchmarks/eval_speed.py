"""Our lm-eval model ('rrt') vs lm-eval's HFLM on gemma-3-270m: same requests, same results, time ratio.

Requests: the first ``--docs`` docs of each of ``--tasks`` (default: the paper's 7), as the harness builds
them. Target: ours >= 2x faster with the same log-likelihoods (fp32 summation order aside) and greedy flags.
Times are process CPU seconds, so run single-threaded where other jobs share the machine:
``OMP_NUM_THREADS=1 python -m benchmarks.eval_speed --docs 30``.
"""

from __future__ import annotations

import argparse
import time

from lm_eval.models.huggingface import HFLM

from benchmarks.common import report
from rrt.assets import load_pretrained, load_tokenizer
from rrt.evaluation.harness import task_manager
from rrt.evaluation.lm import RecursiveLM
from rrt.evaluation.tasks import resolve_tasks


def requests(names: list[str], docs: int) -> dict[str, list]:
    """The harness's requests for the first ``docs`` docs of each task."""
    tasks = task_manager(names).load(names)["tasks"]
    for task in tasks.values():
        task.build_all_requests(limit=docs, rank=0, world_size=1)
    return {name: task.instances for name, task in tasks.items()}


def timed(lm, instances) -> tuple[float, list[tuple[float, bool]]]:
    """CPU seconds of this process (robust on a shared machine; run with OMP_NUM_THREADS=1) and the results."""
    start = time.process_time()
    results = lm.loglikelihood(instances, disable_tqdm=True)
    return time.process_time() - start, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma3_270m")
    parser.add_argument("--tasks", default="paper7", help="paper7 or comma-separated task names")
    parser.add_argument("--docs", type=int, default=30, help="docs per task")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    model, tokenizer = load_pretrained(args.model), load_tokenizer(args.model)
    ours = RecursiveLM(model, tokenizer, batch_size=args.batch_size, progress=False)
    reference = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=args.batch_size, device="cpu")
    rows = []
    names = resolve_tasks(args.tasks if args.tasks == "paper7" else args.tasks.split(","))
    for task, instances in requests(names, args.docs).items():
        ours_s, ours_results = timed(ours, instances)
        hflm_s, hflm_results = timed(reference, instances)
        max_diff = max(abs(a[0] - b[0]) for a, b in zip(ours_results, hflm_results))
        rows.append(
            {
                "task": task,
                "requests": len(instances),
                "hflm_s": hflm_s,
                "rrt_s": ours_s,
                "speedup": hflm_s / ours_s,
                "max_abs_diff": max_diff,
                "greedy_equal": all(a[1] == b[1] for a, b in zip(ours_results, hflm_results)),
            }
        )
    total = {
        "task": "total",
        "requests": sum(r["requests"] for r in rows),
        "hflm_s": sum(r["hflm_s"] for r in rows),
        "rrt_s": sum(r["rrt_s"] for r in rows),
        "max_abs_diff": max(r["max_abs_diff"] for r in rows),
        "greedy_equal": all(r["greedy_equal"] for r in rows),
    }
    rows.append({**total, "speedup": total["hflm_s"] / total["rrt_s"]})
    report(
        "eval_speed",
        rows,
        list(rows[0]),
        extra={"model": args.model, "batch_size": args.batch_size, "docs_per_task": args.docs},
    )


if __name__ == "__main__":
    main()
