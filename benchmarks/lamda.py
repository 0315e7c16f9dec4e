"""LoRA vs LaMDA vs LaMDA++ on the real gemma-3-270m recursive (B=2, Average init), same rank, same tokens.

Each adapter runs in the paper's mode (everything trains) and the PEFT-faithful mode (only adapters train, the
setting of LaMDA's claims: "up to 17.7x fewer parameter updates and up to 1.32x lower peak GPU memory"). Per run:
scalar parameter updates over the run (what the optimizer may change each step, summed), peak memory, step time
and held-out loss after the same tokens; ratios are against LoRA in the same mode.

Each run is its own process, so its peak RSS is its own; the peak is reset once the converted model is loaded, so
it counts weights, gradients, optimizer state and activations but not the load. Beside it, ``state_mb`` (weights
+ gradients + optimizer state) and ``saved_mb`` (tensors autograd saved for the backward of one step) say where
memory goes. The variants run in interleaved rounds (this machine is shared and noisy): step-time and memory
ratios are medians over rounds of each round's ratio, and updates and losses must agree across rounds.

``python -m benchmarks.lamda`` (about 12 min on 2 idle CPU cores, OMP_NUM_THREADS=1), then ``python -m
benchmarks.docs`` puts the table into docs/conversion.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmarks.common import report
from rrt.data.batches import eval_batches, train_batches
from rrt.data.datamodule import TextDataModule
from rrt.recursive import LoRASpec, RecursionSpec, convert_to_recursive
from rrt.recursive.convert import freeze_shared
from rrt.recursive.io import load_converted, save_converted
from rrt.recursive.model import RecursiveModel
from rrt.training.losses import LossSpec, lm_loss
from rrt.training.optim import build_optimizer, updated_scalars

RANK, SEQ_LEN, BATCH, STEPS, VAL_BATCHES, ROUNDS = 64, 128, 2, 6, 4, 2
FREEZE_B_AT = 0.5  # t_i = 3 of 6 steps, so the run shows B freezing column by column (the default is 0.25)
ADAPTERS = ("lora", "lamda", "lamda++")
VARIANTS = {f"{adapter}{' peft' if peft else ''}": (adapter, peft) for peft in (False, True) for adapter in ADAPTERS}
CLAIMS = {"updates_x": 17.7, "peak_memory_x": 1.32}  # LaMDA's abstract (rrt-paper.md section 2.1)
LOSS = LossSpec(chunk_tokens=256)


def data() -> tuple[np.ndarray, np.ndarray]:
    """Packed rows of the local corpus: the training split and the held-out split."""
    rows = TextDataModule(source="local_corpus", tokenizer="gemma3_270m", seq_len=SEQ_LEN, micro_batch_size=BATCH)
    return rows.train_rows(), rows.val_rows()


def prepare(directory: Path) -> None:
    """Convert gemma-3-270m once per adapter (SVD init, LaMDA++ allocation) and save it for the runs."""
    from rrt.assets import load_pretrained

    original = load_pretrained("gemma3_270m")
    for adapter in ADAPTERS:
        lora = LoRASpec(rank=RANK, adapter=adapter, lamda_freeze_b_at=FREEZE_B_AT)
        spec = RecursionSpec(loops=2, init="average", lora=lora)
        save_converted(convert_to_recursive(copy.deepcopy(original), spec), directory / adapter)


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := current RSS


def peak_rss_mb() -> float:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def saved_bytes(run, model: torch.nn.Module) -> tuple[object, int]:
    """``run()``'s result and the bytes of the distinct tensors autograd saved for its backward (weights excluded:
    they are held anyway)."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = run()
    return result, sum(storages.values())


def state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Weights, gradients and optimizer state (each tensor once)."""
    tensors = {id(p): p for p in model.parameters()}
    tensors |= {id(p.grad): p.grad for p in model.parameters() if p.grad is not None}
    tensors |= {id(v): v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def run_variant(name: str, directory: Path) -> dict:
    """Child process: train one variant for STEPS steps on the same batches; its measurements."""
    torch.manual_seed(0)
    adapter, peft = VARIANTS[name]
    model = load_converted(directory / adapter)
    if peft:
        freeze_shared(model)
    train_rows, val_rows = data()
    batches = train_batches(train_rows, BATCH, seed=0)
    factory = partial(torch.optim.AdamW, lr=2e-4, betas=(0.9, 0.95), weight_decay=0.1)  # rrt/conf/optim/adamw.yaml
    optimizer, freezer = build_optimizer(model, factory, STEPS)
    recursive = RecursiveModel(model)
    start_ce = held_out_ce(recursive, val_rows)
    model.train()
    reset_peak_rss()
    seconds, updates, saved, state = [], [], 0, 0
    for step in range(1, STEPS + 1):
        ids = torch.from_numpy(next(batches).astype(np.int64))
        start = time.perf_counter()
        loss, step_saved = saved_bytes(lambda ids=ids: losses(recursive, ids)["loss"], model)
        loss.backward()
        if freezer is not None:
            freezer.mask_gradients()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        updates.append(updated_scalars(optimizer, freezer, step))
        optimizer.step()
        seconds.append(time.perf_counter() - start)
        saved, state = max(saved, step_saved), max(state, state_bytes(model, optimizer))
        optimizer.zero_grad(set_to_none=True)
    peak = peak_rss_mb()
    return {
        "step_s": statistics.median(seconds[1:]),
        "peak_mb": peak,
        "state_mb": state / 2**20,
        "saved_mb": saved / 2**20,
        "updates": sum(updates),
        "updates_last_step": updates[-1],
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "heldout_ce_start": start_ce,
        "heldout_ce": held_out_ce(recursive, val_rows),
    }


def losses(recursive: RecursiveModel, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    return lm_loss([recursive.final_hidden(ids)], recursive.head, ids, LOSS)


def held_out_ce(recursive: RecursiveModel, val_rows: np.ndarray) -> float:
    """Mean CE of the held-out batches (the same ones for every variant), in eval mode."""
    recursive.model.eval()
    batches = (torch.from_numpy(rows.astype(np.int64)) for rows in eval_batches(val_rows, BATCH, VAL_BATCHES))
    with torch.no_grad():
        return statistics.fmean(losses(recursive, ids)["ce"].item() for ids in batches)


def child(name: str, directory: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.lamda", "--variant", name, "--models", str(directory)],
        check=False,
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise RuntimeError(f"variant {name!r} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def rows_from_rounds(rounds: list[dict[str, dict]]) -> list[dict]:
    """One row per variant: medians over rounds, ratios against LoRA in the same mode (per round, then median)."""
    rows = []
    for name, (_, peft) in VARIANTS.items():
        lora = "lora peft" if peft else "lora"
        runs = [r[name] for r in rounds]
        for key in ("updates", "heldout_ce_start", "heldout_ce"):  # deterministic: the same in every round
            assert len({run[key] for run in runs}) == 1, (name, key, [run[key] for run in runs])
        median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        rows.append(
            {
                "variant": name,
                "mode": "peft" if peft else "paper",
                **median,
                "updates_x": rounds[0][lora]["updates"] / runs[0]["updates"],
                "updates_last_step_x": rounds[0][lora]["updates_last_step"] / runs[0]["updates_last_step"],
                "peak_memory_x": statistics.median(r[lora]["peak_mb"] / r[name]["peak_mb"] for r in rounds),
                "step_time_ratio": statistics.median(r[name]["step_s"] / r[lora]["step_s"] for r in rounds),
            }
        )
    return rows


COLUMNS = [
    "variant",
    "updates",
    "updates_x",
    "updates_last_step_x",
    "peak_mb",
    "peak_memory_x",
    "state_mb",
    "saved_mb",
    "step_s",
    "step_time_ratio",
    "heldout_ce_start",
    "heldout_ce",
]


def table(data: dict) -> str:
    """The docs block (docs/conversion.md, via benchmarks.docs): the setup, the table, the claims side by side."""
    from benchmarks.docs import markdown  # the docs renderer imports this module

    setup, claims, rows = data["setup"], data["paper_claims"], {row["variant"]: row for row in data["rows"]}
    caption = (
        f"gemma-3-270m, B={setup['loops']}, {setup['init']} init, rank {setup['rank']}, {setup['steps']} "
        f"steps x {setup['micro_batch']} x {setup['seq_len']} tokens, "
        f"lamda_freeze_b_at={setup['lamda_freeze_b_at']}, {setup['rounds']} interleaved rounds; ratios against "
        "LoRA in the same mode."
    )
    frame = pd.DataFrame([{c: row[c] for c in COLUMNS} for row in rows.values()])
    frame["updates"] = frame["updates"].map("{:.3g}".format)
    for column in ("peak_mb", "state_mb", "saved_mb"):
        frame[column] = frame[column].map("{:.0f}".format)
    claims_lines = [
        f"- {name} vs lora peft: {rows[name]['updates_x']:.3g}x fewer scalar updates over the run, "
        f"{rows[name]['updates_last_step_x']:.3g}x per step once B is frozen (paper: up to "
        f"{claims['updates_x']}x); {rows[name]['peak_memory_x']:.3g}x lower peak memory (paper: up to "
        f"{claims['peak_memory_x']}x)."
        for name in ("lamda peft", "lamda++ peft")
    ]
    return "\n".join([caption, "", markdown(frame), "", *claims_lines])


def main() -> None:
    rounds = []
    with tempfile.TemporaryDirectory(prefix="rrt-lamda-") as tmp:
        directory = Path(tmp)
        prepare(directory)
        names = list(VARIANTS)
        for index in range(ROUNDS):
            order = names[index % len(names) :] + names[: index % len(names)]  # rotate who runs first
            rounds.append({name: child(name, directory) for name in order})
    setup = {
        "model": "gemma3_270m",
        "loops": 2,
        "init": "average",
        "rank": RANK,
        "steps": STEPS,
        "seq_len": SEQ_LEN,
        "micro_batch": BATCH,
        "tokens": STEPS * SEQ_LEN * BATCH,
        "lamda_freeze_b_at": FREEZE_B_AT,
        "rounds": ROUNDS,
        "optimizer": "AdamW lr 2e-4 betas (0.9, 0.95) wd 0.1, clip 1.0",
    }
    report("lamda", rows_from_rounds(rounds), COLUMNS, extra={"setup": setup, "paper_claims": CLAIMS, "rounds": rounds})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=list(VARIANTS))
    parser.add_argument("--models", type=Path)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.models)))
    else:
        main()
