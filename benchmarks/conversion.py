"""Conversion cost and forward overhead on the real gemma-3-270m.

1. Conversion time at r=512 (target <= 30 s on a 2-core CPU), full SVD vs torch.svd_lowrank: time and
   relative reconstruction error of W_depth by W' + B A, which decides ``lora.svd``'s default.
2. Forward time of recursive (r=0) and relaxed (r=64) vs the vanilla model on the same batch
   (targets <= 1.05x and <= 1.15x): the per-depth adapters must not add dominating Python overhead.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch

from benchmarks.common import report, timeit
from rrt.assets import load_pretrained
from rrt.models import family_for
from rrt.recursive import LoRASpec, RecursionSpec, convert_to_recursive


def reconstruction_error(original, converted) -> float:
    """Mean over depths and linears of ||W_depth - (W' + BA)|| / ||W_depth||."""
    family = family_for(original.config)
    errors = []
    torch.set_grad_enabled(False)
    for depth, (a, b) in enumerate(zip(family.layer_list(original), family.layer_list(converted))):
        for path in family.linears:
            target = a.get_submodule(path).weight
            adapter = b.get_submodule(path)
            approx = adapter.base.weight + adapter.delta_weight()
            errors.append(float(torch.linalg.norm(target - approx) / torch.linalg.norm(target)))
    return sum(errors) / len(errors)


def main() -> None:
    torch.manual_seed(0)
    original = load_pretrained("gemma3_270m")
    rows = []
    for method in ("full", "lowrank"):
        model = copy.deepcopy(original)
        start = time.perf_counter()
        convert_to_recursive(model, RecursionSpec(loops=2, init="average", lora=LoRASpec(rank=512, svd=method)))
        seconds = time.perf_counter() - start
        rows.append(
            {
                "what": f"convert r=512 svd={method}",
                "seconds": seconds,
                "rel_error": reconstruction_error(original, model),
            }
        )
        del model

    ids = torch.randint(0, original.config.vocab_size, (4, 256), generator=torch.Generator().manual_seed(0))
    models = {
        "vanilla": original,
        "recursive r=0": convert_to_recursive(copy.deepcopy(original), RecursionSpec(loops=2)),
        "relaxed r=64": convert_to_recursive(
            copy.deepcopy(original), RecursionSpec(loops=2, init="average", lora=LoRASpec(rank=64))
        ),
    }
    # Interleaved rounds: each round times every model once, so load from other processes hits all alike.
    seconds = {name: [] for name in models}
    with torch.inference_mode():
        for name, model in models.items():
            model(input_ids=ids, use_cache=False)  # warm-up
        for _ in range(5):
            for name, model in models.items():
                seconds[name].append(timeit(lambda: model(input_ids=ids, use_cache=False), repeats=1, warmup=0))
    ratios = {name: statistics.median(s / v for s, v in zip(seconds[name], seconds["vanilla"])) for name in models}
    for name, target in [("vanilla", None), ("recursive r=0", 1.05), ("relaxed r=64", 1.15)]:
        rows.append(
            {
                "what": f"forward {name} (4x256)",
                "seconds": statistics.median(seconds[name]),
                "ratio": ratios[name],
                "target": f"<= {target}" if target else None,
            }
        )
    report("conversion", rows, ["what", "seconds", "ratio", "target", "rel_error"])


if __name__ == "__main__":
    main()
