"""The GPU check, prepared before a GPU is lent: training, loss, FSDP2, serving and eval speed in one JSON.

    bash benchmarks/gpu_check.sh                 # one GPU, <= 8 min: benchmarks/results/gpu/gpu_check.json
    python -m benchmarks.gpu_check --reduced     # CPU: tiny models, a few steps (CI runs it, < 1 min)

1. train: tokens/s and model FLOPs utilisation (MFU) of vanilla / recursive (B=2) / relaxed (r=64) gemma-3-270m,
   bf16 autocast through rrt's chunked loss, eager and with torch.compile'd decoder layers; interleaved rounds.
2. loss: rrt's chunked CE vs the naive full-logit CE vs Liger's fused linear CE (when installed): time, peak memory.
3. fsdp: FSDP2 with rrt's tie-keeping units (bf16 parameters, fp32 reduction) on this one device: a few steps
   and a distributed-checkpoint save + load round trip.
4. serving: tokens/s of vanilla static batching, CSB and CDB (recursive, all loops) at batch 8/32/64.
5. eval: rrt's lm-eval model vs lm-eval's HFLM on synthetic log-likelihood requests: time ratio, same scores.

Each section's failure is recorded in the JSON and the others still run; past the time budget the remaining
sections are recorded as skipped. Weights are random (the shipped architecture): throughput does not depend on
them, and the GPU machine cannot fetch the registry-packaged checkpoint.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import socket
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoModelForCausalLM

from benchmarks.common import RESULTS
from rrt.models import family_for
from rrt.recursive import LoRASpec, RecursionSpec, convert_to_recursive
from rrt.recursive.counting import model_config
from rrt.training.losses import LossSpec, lm_loss

# Dense bf16 tensor-core peak (vendor spec sheets, SXM parts); MFU is reported against it and against the
# measured 8192^3 bf16 matmul rate of this device.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}


@dataclass(frozen=True)
class Setting:
    """What one check runs; :data:`GPU` and :data:`REDUCED` are the two used."""

    model: str
    config_overrides: dict
    rank: int  # the relaxed variant's LoRA rank
    batch: int
    seq_len: int
    steps: int  # timed train steps per round
    rounds: int
    compile_backend: str  # inductor on GPU; eager on CPU (traces with dynamo, no codegen wait)
    loss_tokens: int
    chunk_tokens: int
    serve_batches: tuple[int, ...]
    serve_prompt: int
    serve_new: int
    eval_requests: int
    eval_context: int
    budget_s: float


GPU = Setting(
    "gemma3_270m",
    {},
    rank=64,
    batch=8,
    seq_len=1024,
    steps=5,
    rounds=3,
    compile_backend="inductor",
    loss_tokens=8192,
    chunk_tokens=1024,
    serve_batches=(8, 32, 64),
    serve_prompt=32,
    serve_new=32,
    eval_requests=256,
    eval_context=256,
    budget_s=420,
)
REDUCED = Setting(
    "tiny_gemma3",
    {"vocab_size": 512},
    rank=8,
    batch=2,
    seq_len=32,
    steps=2,
    rounds=2,
    compile_backend="eager",
    loss_tokens=256,
    chunk_tokens=64,
    serve_batches=(2, 4),
    serve_prompt=6,
    serve_new=4,
    eval_requests=16,
    eval_context=12,
    budget_s=120,
)


@dataclass
class Check:
    """The device, the clock and the sections' results."""

    setting: Setting
    device: torch.device
    started: float = field(default_factory=time.perf_counter)
    sections: dict = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def seconds(self, fn: Callable[[], object]) -> float:
        """Wall seconds of one call, the device's queue drained before and after."""
        self.sync()
        start = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - start

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else nullcontext()

    def run(self, name: str, section: Callable[[Check], dict]) -> None:
        """Run one section, recording its result, its error or that the time budget skipped it."""
        left = self.setting.budget_s - (time.perf_counter() - self.started)
        if left <= 0:
            self.sections[name] = {"status": "skipped", "reason": f"time budget of {self.setting.budget_s:.0f} s spent"}
            return
        start = time.perf_counter()
        try:
            self.sections[name] = {"status": "ok", **section(self)}
        except Exception as error:  # noqa: BLE001  (one broken section must not cost the others their GPU minutes)
            self.sections[name] = {
                "status": "error",
                "error": f"{type(error).__name__}: {error}",
                "traceback": traceback.format_exc()[-3000:],
            }
        self.sections[name]["seconds"] = time.perf_counter() - start
        print(f"[{time.perf_counter() - self.started:6.1f} s] {name}: {self.sections[name]['status']}", flush=True)


# ---------------------------------------------------------------- models


def architecture(setting: Setting):
    config = model_config(setting.model)
    for key, value in setting.config_overrides.items():
        setattr(config, key, value)
    return config


def build(check: Check, kind: str) -> nn.Module:
    """``vanilla``, ``recursive`` (B=2, stepwise) or ``relaxed`` (B=2, average, SVD LoRA): random fp32 weights
    (the same for every kind) on the device, where the relaxation's SVDs run too."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(architecture(check.setting)).to(check.device).train()
    if kind == "vanilla":
        return model
    lora = LoRASpec(rank=check.setting.rank if kind == "relaxed" else 0)
    return convert_to_recursive(
        model, RecursionSpec(loops=2, init="stepwise" if kind == "recursive" else "average", lora=lora)
    )


def variants(check: Check) -> dict[str, nn.Module]:
    return {
        name: build(check, kind)
        for name, kind in (
            ("vanilla", "vanilla"),
            ("recursive", "recursive"),
            (f"relaxed r={check.setting.rank}", "relaxed"),
        )
    }


def train_flops_per_token(model: nn.Module, seq_len: int) -> float:
    """6 x (parameters each token passes through: a shared layer counts at every depth, plus the LM head) plus
    attention's 12 x layers x heads x head_dim x seq_len (PaLM's convention: no causal or sliding-window discount)."""
    config = model.config
    layers = family_for(config).layer_list(model)
    dense = sum(p.numel() for layer in layers for p in layer.parameters())
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attention = 12 * len(layers) * config.num_attention_heads * head_dim * seq_len
    return 6 * (dense + model.get_output_embeddings().weight.numel()) + attention


def peak_flops(check: Check) -> dict:
    if not check.cuda:
        return {"spec_bf16": None, "measured_matmul_bf16": None}
    name = torch.cuda.get_device_name(check.device)
    spec = next((value for key, value in PEAK_BF16_FLOPS.items() if key in name), None)
    a = torch.randn(8192, 8192, device=check.device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ a
    seconds = statistics.median(check.seconds(lambda: a @ a) for _ in range(10))
    return {"spec_bf16": spec, "measured_matmul_bf16": 2 * 8192**3 / seconds}


def train_step(check: Check, model: nn.Module, optimizer: torch.optim.Optimizer, ids: torch.Tensor) -> float:
    with check.autocast():
        hidden = model.base_model(input_ids=ids, use_cache=False).last_hidden_state
        loss = lm_loss(
            [hidden], model.get_output_embeddings().weight, ids, LossSpec(chunk_tokens=check.setting.chunk_tokens)
        )["loss"]
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def compile_layers(model: nn.Module, backend: str) -> nn.Module:
    """torch.compile each decoder layer (the shared block's depths reuse one graph per layer type)."""
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    for layer in family_for(model.config).layer_list(model):
        layer.compile(backend=backend)
    return model


# ---------------------------------------------------------------- sections


def train_section(check: Check) -> dict:
    setting = check.setting
    eager = variants(check)
    compiled = {f"{n} +compile": compile_layers(copy.deepcopy(m), setting.compile_backend) for n, m in eager.items()}
    models = {**eager, **compiled}
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-5, fused=check.cuda) for name, m in models.items()}
    ids = torch.randint(
        0,
        models["vanilla"].config.vocab_size,
        (setting.batch, setting.seq_len),
        generator=torch.Generator().manual_seed(0),
    ).to(check.device)
    tokens = setting.batch * setting.seq_len

    def steps(name: str, n: int) -> float:
        """Seconds of ``n`` train steps of one variant (its last loss kept)."""
        return check.seconds(
            lambda: losses.__setitem__(
                name, [train_step(check, models[name], optimizers[name], ids) for _ in range(n)][-1]
            )
        )

    losses: dict[str, float] = {}
    first_s, compile_errors = {}, {}
    for name in list(models):  # warm-up: allocates AdamW state, compiles; a failed compile keeps the eager rows
        try:
            first_s[name] = steps(name, 1)
        except Exception as error:
            if not name.endswith("+compile"):
                raise
            compile_errors[name] = f"{type(error).__name__}: {error}"[:2000]
            del models[name], optimizers[name]
    rounds: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(setting.rounds):  # interleaved: load and clocks hit every variant alike
        for name, tokens_per_s in rounds.items():
            tokens_per_s.append(tokens * setting.steps / steps(name, setting.steps))
    peak = peak_flops(check)
    rows = []
    for name, model in models.items():
        tokens_per_s = statistics.median(rounds[name])
        flops = train_flops_per_token(model, setting.seq_len) * tokens_per_s
        base = name.removesuffix(" +compile")
        rows.append(
            {
                "variant": name,
                "tokens_per_s": tokens_per_s,
                "tokens_per_s_rounds": rounds[name],
                "vs_vanilla": tokens_per_s / statistics.median(rounds["vanilla"]),
                "compile_speedup": tokens_per_s / statistics.median(rounds[base]) if name != base else None,
                "model_tflops_per_s": flops / 1e12,
                "mfu": flops / peak["spec_bf16"] if peak["spec_bf16"] else None,
                "mfu_vs_measured_matmul": flops / peak["measured_matmul_bf16"]
                if peak["measured_matmul_bf16"]
                else None,
                "first_step_s": first_s[name],
                "loss": losses[name],
                "peak_memory_gb": None,
            }
        )
        if not math.isfinite(rows[-1]["loss"]):  # NaN through bf16 + the chunked loss is a failure
            raise FloatingPointError(f"{name}: non-finite loss {rows[-1]['loss']}")
    if check.cuda:
        rows[-1]["peak_memory_gb"] = torch.cuda.max_memory_allocated(check.device) / 2**30  # all variants held
    return {
        "batch": setting.batch,
        "seq_len": setting.seq_len,
        "precision": "bf16 autocast" if check.cuda else "fp32",
        "compile_backend": setting.compile_backend,
        "compile_errors": compile_errors,
        "peak_flops": peak,
        "rows": rows,
    }


def loss_step(fn: Callable[[], torch.Tensor], *inputs: torch.Tensor) -> float:
    """Forward + backward of one loss; the inputs' gradients dropped again."""
    value = fn()
    value.backward()
    for tensor in inputs:
        tensor.grad = None
    return value.item()


def loss_section(check: Check) -> dict:
    setting = check.setting
    config = architecture(setting)
    vocab, hidden_size, tokens = config.vocab_size, config.hidden_size, setting.loss_tokens
    dtype = torch.bfloat16 if check.cuda else torch.float32
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, tokens, hidden_size, generator=g).to(check.device, dtype).requires_grad_()
    head = (torch.randn(vocab, hidden_size, generator=g) * 0.02).to(check.device, dtype).requires_grad_()
    labels = torch.randint(0, vocab, (1, tokens), generator=g).to(check.device)
    flat, targets = hidden[0, :-1], labels[0, 1:]

    def naive():
        return F.cross_entropy((flat @ head.T).float(), targets)

    def chunked():
        return lm_loss([hidden], head, labels, LossSpec(chunk_tokens=setting.chunk_tokens))["loss"]

    kinds: dict[str, Callable[[], torch.Tensor] | str] = {"naive": naive, "chunked (rrt)": chunked}
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        liger = LigerFusedLinearCrossEntropyLoss()
        kinds["fused (liger)"] = lambda: liger(head, flat, targets)
    except ImportError as error:
        kinds["fused (liger)"] = f"unavailable: {error}"
    rows = []
    for kind, fn in kinds.items():
        if isinstance(fn, str):
            rows.append({"loss": kind, "status": fn})
            continue
        value = loss_step(fn, hidden, head)  # warm-up
        if check.cuda:
            torch.cuda.reset_peak_memory_stats(check.device)
            base = torch.cuda.memory_allocated(check.device)
        seconds = statistics.median(check.seconds(lambda fn=fn: loss_step(fn, hidden, head)) for _ in range(3))
        peak = (torch.cuda.max_memory_allocated(check.device) - base) / 2**30 if check.cuda else None
        rows.append({"loss": kind, "status": "ok", "seconds": seconds, "peak_extra_gb": peak, "value": value})
    reference = rows[0]
    for row in rows:
        if row["status"] == "ok":
            row["time_ratio"] = row["seconds"] / reference["seconds"]
            row["mem_ratio"] = row["peak_extra_gb"] / reference["peak_extra_gb"] if check.cuda else None
            row["abs_diff_vs_naive"] = abs(row["value"] - reference["value"])
    return {"tokens": tokens, "vocab": vocab, "hidden": hidden_size, "dtype": str(dtype), "rows": rows}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fsdp_section(check: Check) -> dict:
    """One-rank FSDP2: the sharding plan, bf16 mixed precision and a DCP round trip run on this device."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        set_model_state_dict,
    )
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy

    from rrt.training.fsdp import fsdp_units, shard, shared_leaves

    setting = check.setting
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(free_port())
    dist.init_process_group("nccl" if check.cuda else "gloo", rank=0, world_size=1)
    try:
        name = f"relaxed r={setting.rank}"
        models = [build(check, "relaxed") for _ in range(2)]
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if check.cuda else None
        mesh = init_device_mesh(check.device.type, (1,))
        shared = len(shared_leaves(models[0]))
        for model in models:
            shard(model, mesh, policy)
        model, optimizer = models[0], torch.optim.AdamW(models[0].parameters(), lr=1e-4)
        ids = torch.randint(
            0, model.config.vocab_size, (setting.batch, setting.seq_len), generator=torch.Generator().manual_seed(1)
        ).to(check.device)
        losses = [train_step(check, model, optimizer, ids)]
        seconds = check.seconds(
            lambda: losses.extend(train_step(check, model, optimizer, ids) for _ in range(setting.steps))
        )
        with tempfile.TemporaryDirectory() as directory:
            dcp.save({"model": get_model_state_dict(model)}, checkpoint_id=directory)
            state = {"model": get_model_state_dict(models[1])}
            dcp.load(state, checkpoint_id=directory)
            set_model_state_dict(models[1], state["model"])
        restored = all(
            torch.equal(a.full_tensor(), b.full_tensor()) for a, b in zip(model.parameters(), models[1].parameters())
        )
        if not (restored and all(math.isfinite(value) for value in losses)):
            raise RuntimeError(f"FSDP smoke failed: restored={restored}, losses={losses}")
        return {
            "variant": name,
            "units": len(fsdp_units(model)),
            "shared_leaf_units": shared,
            "mixed_precision": "bf16 params, fp32 reduce" if policy else "fp32",
            "tokens_per_s": setting.batch * setting.seq_len * setting.steps / seconds,
            "losses": losses,
            "checkpoint_round_trip": restored,
            "peak_memory_gb": torch.cuda.max_memory_allocated(check.device) / 2**30 if check.cuda else None,
        }
    finally:
        dist.destroy_process_group()


def serving_section(check: Check) -> dict:
    from rrt.serving import Engine, FullDepth, Request

    setting = check.setting
    dtype = torch.bfloat16 if check.cuda else torch.float32
    full, recursive = (build(check, kind).to(dtype).eval() for kind in ("vanilla", "recursive"))
    setups = {"vanilla static": (full, "static"), "CSB": (full, "csb"), "CDB": (recursive, "cdb")}
    generator = torch.Generator().manual_seed(0)
    rows = []
    for batch in setting.serve_batches:
        prompts = torch.randint(3, full.config.vocab_size, (2 * batch, setting.serve_prompt), generator=generator)
        requests = [Request(i, prompt.tolist(), setting.serve_new) for i, prompt in enumerate(prompts)]
        engines = {
            name: Engine(model, FullDepth(), max_batch=batch, batching=batching)
            for name, (model, batching) in setups.items()
        }
        for engine in engines.values():
            engine.generate(requests[:1])  # warm-up
        rates: dict[str, list[float]] = {name: [] for name in engines}
        for _ in range(setting.rounds):
            for name, engine in engines.items():
                check.sync()
                _, stats = engine.generate(requests)
                check.sync()
                rates[name].append(stats.tokens_per_s)
        medians = {name: statistics.median(values) for name, values in rates.items()}
        rows.extend(
            {
                "batch": batch,
                "engine": name,
                "tokens_per_s": medians[name],
                "tokens_per_s_rounds": rates[name],
                "vs_vanilla": medians[name] / medians["vanilla static"],
                "vs_csb": medians[name] / medians["CSB"],
            }
            for name in engines
        )
    return {
        "requests_per_batch": "2 x batch",
        "prompt_tokens": setting.serve_prompt,
        "new_tokens": setting.serve_new,
        "dtype": str(dtype),
        "rows": rows,
    }


def word_tokenizer(vocab_size: int):
    """A word-level fast tokenizer over ``vocab_size`` words (w0 = <bos>, w1 = <eos>): no asset needed."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab_size)}, unk_token="w2"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="w0", eos_token="w1", unk_token="w2")


def eval_section(check: Check) -> dict:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from rrt.evaluation.lm import RecursiveLM

    setting = check.setting
    model = build(check, "recursive").eval()
    tokenizer = word_tokenizer(model.config.vocab_size)
    generator = torch.Generator().manual_seed(0)

    def words(n: int) -> str:
        return " ".join(f"w{i}" for i in torch.randint(3, model.config.vocab_size, (n,), generator=generator).tolist())

    requests = [
        Instance("loglikelihood", {}, (words(setting.eval_context - i % 7), " " + words(1 + i % 3)), i)
        for i in range(setting.eval_requests)
    ]
    ours = RecursiveLM(model, tokenizer, batch_size=16, add_bos_token=True, progress=False)
    reference = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=16, device=str(check.device), add_bos_token=True)
    results, seconds = {}, {"rrt": [], "hflm": []}
    for _ in range(max(1, setting.rounds - 1)):
        for name, lm in (("rrt", ours), ("hflm", reference)):
            seconds[name].append(
                check.seconds(
                    lambda name=name, lm=lm: results.__setitem__(name, lm.loglikelihood(requests, disable_tqdm=True))
                )
            )
    rrt_s, hflm_s = statistics.median(seconds["rrt"]), statistics.median(seconds["hflm"])
    return {
        "requests": len(requests),
        "context_tokens": setting.eval_context,
        "rrt_s": rrt_s,
        "hflm_s": hflm_s,
        "speedup": hflm_s / rrt_s,
        "max_abs_diff": max(abs(a[0] - b[0]) for a, b in zip(results["rrt"], results["hflm"])),
        "greedy_equal": all(a[1] == b[1] for a, b in zip(results["rrt"], results["hflm"])),
    }


SECTIONS = {
    "train": train_section,
    "loss": loss_section,
    "fsdp": fsdp_section,
    "serving": serving_section,
    "eval": eval_section,
}


def machine(check: Check) -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(check.device),
        "gpu": torch.cuda.get_device_name(check.device) if check.cuda else None,
        "cpu": platform.processor(),
        "threads": torch.get_num_threads(),
        "host": socket.gethostname(),
    }


def summary(result: dict) -> None:
    """The ratio tables, printed."""
    sections = result["sections"]
    for name, columns in (
        ("train", ["variant", "tokens_per_s", "vs_vanilla", "compile_speedup", "mfu"]),
        ("loss", ["loss", "seconds", "time_ratio", "peak_extra_gb", "mem_ratio"]),
        ("serving", ["batch", "engine", "tokens_per_s", "vs_vanilla", "vs_csb"]),
    ):
        rows = sections.get(name, {}).get("rows") or []
        print(f"\n{name}:")
        for row in rows:
            print(
                "  "
                + "  ".join(
                    f"{c}={row.get(c):.4g}" if isinstance(row.get(c), float) else f"{c}={row.get(c)}" for c in columns
                )
            )
    for name in ("fsdp", "eval"):
        data = {k: v for k, v in sections.get(name, {}).items() if k not in ("traceback", "losses")}
        print(f"\n{name}: {data}")


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reduced", action="store_true", help="tiny models, a few steps (the CPU/CI mode)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of the default")
    parser.add_argument("--budget-s", type=float, help="stop starting sections after this many seconds")
    parser.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/gpu/gpu_check[_reduced].json)")
    args = parser.parse_args(argv)
    setting = REDUCED if args.reduced or args.device == "cpu" else GPU
    if args.budget_s is not None:
        setting = Setting(**{**asdict(setting), "budget_s": args.budget_s})
    check = Check(setting, torch.device(args.device))
    if check.cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    for name in args.sections.split(","):
        check.run(name, SECTIONS[name])
        if check.cuda:
            torch.cuda.empty_cache()
    out = args.out or RESULTS / "gpu" / ("gpu_check.json" if setting is GPU else "gpu_check_reduced.json")
    result = {
        "benchmark": "gpu_check",
        "mode": "gpu" if setting == GPU else "reduced",
        "machine": machine(check),
        "setting": asdict(setting),
        "total_s": time.perf_counter() - check.started,
        "sections": check.sections,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    summary(result)
    print(f"\nsaved {out} ({result['total_s']:.0f} s)")
    return out


if __name__ == "__main__":
    main()
