"""Training cost on the real gemma-3-270m and of the chunked LM loss at vocabulary 262k.

1. Step time (forward + backward + AdamW) of recursive (r=0) and relaxed (r=64) vs the vanilla model, same batch,
   interleaved rounds (targets <= 1.05x and <= 1.15x).
2. Peak memory and time of the chunked CE + forward-KL loss vs the naive full-logit computation (target <= 0.5x
   memory). Each variant runs in its own process so that its peak RSS is its own.
"""

from __future__ import annotations

import copy
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch.nn import functional as F

from benchmarks.common import report, timeit
from rrt.recursive import LoRASpec, RecursionSpec, convert_to_recursive
from rrt.training.losses import LossSpec, kd_per_token, lm_loss

VOCAB, HIDDEN, TOKENS = 262_144, 640, 1024


def loss_inputs():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, TOKENS, HIDDEN, generator=g, requires_grad=True)
    head = (torch.randn(VOCAB, HIDDEN, generator=g) * 0.02).requires_grad_()
    teacher_hidden = torch.randn(1, TOKENS, HIDDEN, generator=g)
    teacher_head = torch.randn(VOCAB, HIDDEN, generator=g) * 0.02
    labels = torch.randint(0, VOCAB, (1, TOKENS), generator=g)
    return hidden, head, teacher_hidden, teacher_head, labels


def naive_loss(hidden, head, teacher_hidden, teacher_head, labels):
    logits = hidden[:, :-1].reshape(-1, HIDDEN) @ head.T
    teacher = (teacher_hidden[:, :-1].reshape(-1, HIDDEN) @ teacher_head.T).detach()
    ce = F.cross_entropy(logits, labels[:, 1:].reshape(-1))
    return ce + kd_per_token(logits, teacher, "forward_kl").mean()


def chunked_loss(hidden, head, teacher_hidden, teacher_head, labels):
    spec = LossSpec(kd="forward_kl", kd_weight=1.0, chunk_tokens=256)
    return lm_loss([hidden], head, labels, spec, teacher_hidden, teacher_head)["loss"]


def measure_loss(kind: str) -> None:
    """Child process: one forward + backward of the loss; print peak RSS growth (MB) and seconds."""
    inputs = loss_inputs()
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    loss = (naive_loss if kind == "naive" else chunked_loss)(*inputs)
    loss.backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_mb": (peak - baseline) / 1024, "seconds": seconds, "loss": float(loss)}))


def loss_rows() -> list[dict]:
    results = {}
    for kind in ("naive", "chunked"):
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.training", "--loss", kind], capture_output=True, text=True, check=True
        )
        results[kind] = json.loads(out.stdout.strip().splitlines()[-1])
    assert abs(results["naive"]["loss"] - results["chunked"]["loss"]) < 1e-3
    naive = results["naive"]
    return [
        {
            "what": f"CE+KD {kind} ({TOKENS} tok, V={VOCAB})",
            "seconds": r["seconds"],
            "peak_mb": r["peak_mb"],
            "mem_ratio": r["peak_mb"] / naive["peak_mb"],
            "time_ratio": r["seconds"] / naive["seconds"],
            "target": "<= 0.5 (memory)" if kind == "chunked" else None,
        }
        for kind, r in results.items()
    ]


def step_rows() -> list[dict]:
    from rrt.assets import load_pretrained

    original = load_pretrained("gemma3_270m").train()
    models = {
        "vanilla": original,
        "recursive r=0": convert_to_recursive(copy.deepcopy(original), RecursionSpec(loops=2)),
        "relaxed r=64": convert_to_recursive(
            copy.deepcopy(original), RecursionSpec(loops=2, init="average", lora=LoRASpec(rank=64))
        ),
    }
    ids = torch.randint(0, original.config.vocab_size, (2, 128), generator=torch.Generator().manual_seed(0))
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-5) for name, m in models.items()}

    def step(name):
        model, optimizer = models[name], optimizers[name]
        spec = LossSpec(chunk_tokens=256)
        hidden = model.base_model(input_ids=ids, use_cache=False).last_hidden_state
        lm_loss([hidden], model.get_output_embeddings().weight, ids, spec)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = {name: [] for name in models}
    for name in models:
        step(name)  # warm-up (allocates optimizer state)
    for _ in range(3):  # interleaved rounds: background load hits every model alike
        for name in models:
            seconds[name].append(timeit(lambda: step(name), repeats=1, warmup=0))
    ratios = {n: statistics.median(s / v for s, v in zip(seconds[n], seconds["vanilla"])) for n in models}
    targets = {"vanilla": None, "recursive r=0": "<= 1.05", "relaxed r=64": "<= 1.15"}
    return [
        {
            "what": f"train step {n} (2x128)",
            "seconds": statistics.median(seconds[n]),
            "time_ratio": ratios[n],
            "target": targets[n],
        }
        for n in models
    ]


def main() -> None:
    torch.manual_seed(0)
    rows = loss_rows() + step_rows()
    report("training", rows, ["what", "seconds", "time_ratio", "mem_ratio", "peak_mb", "target"])


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--loss":
        measure_loss(sys.argv[2])
    else:
        main()
