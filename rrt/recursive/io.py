"""Save and load converted models: unique tensors in safetensors plus the recursion spec.

``save_pretrained`` of transformers writes every tied alias or drops them with a warning, and cannot
re-tie on load. Here each unique parameter is written once under its first name; loading rebuilds the
architecture, converts it with ``initialize=False`` (no SVD is recomputed) and fills the unique tensors,
so ties are restored by construction.

A converted dir must not pass for a plain checkpoint: stock ``from_pretrained`` would build the L-layer model,
ignore the adapters and leave tied norms random, with only a load report. Its ``config.json`` therefore names, as
``transformers_weights`` (the weights file transformers reads instead of ``model.safetensors``), a sentence that is
no safetensors name: transformers refuses it before loading anything and quotes it, so the user reads the way out
(:data:`HF_REFUSAL`). ``AutoConfig`` still reads the config, so rrt and tokenizers read it as before.

``save_converted(..., dtype=torch.bfloat16)`` stores the floating-point weights in bf16 (half the disk of fp32);
the dir's ``config.json`` says so (``dtype``). ``load_converted`` returns fp32 by default (bf16 compute is ~300x
slower on CPUs without bf16 kernels; the upcast is exact), ``dtype=None`` the dtype the weights were saved in.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.initialization import no_init_weights

from rrt.errors import UserError
from rrt.recursive.convert import convert_to_recursive, recursion_spec_of
from rrt.recursive.spec import RecursionSpec
from rrt.utils.atomic import atomic_path, atomic_write_json

WEIGHTS = "model.safetensors"
SPEC = "recursion.json"
CONFIG = "config.json"
HF_REFUSAL = (
    "this dir holds an rrt Recursive Transformer, not a plain checkpoint: load it with "
    "rrt.from_pretrained(<dir>) (lm-eval: rrt-lm-eval --model rrt --model_args pretrained=<dir>), "
    "or export a plain one with rrt-export <dir> <out>"
)


def unique_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and persistent buffer once, under its first name."""
    state = {name: p.detach().contiguous() for name, p in model.named_parameters()}
    for name, buffer in model.named_buffers():
        leaf = name.rpartition(".")[2]
        owner = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        if leaf not in owner._non_persistent_buffers_set:
            state[name] = buffer.detach().contiguous()
    return state


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def dtype_named(name: str, key: str = "save_dtype") -> torch.dtype:
    """A storage dtype by its config name (``float32`` | ``bfloat16``)."""
    if name not in DTYPES:
        raise UserError(f"{key}={name}: unknown dtype; supported: {list(DTYPES)}")
    return DTYPES[name]


def save_converted(model: nn.Module, directory: str | Path, tokenizer=None, dtype: torch.dtype | None = None) -> Path:
    """Save ``model`` (converted or plain) to ``directory``; ``dtype``: store floating-point weights in this dtype
    (None: as they are). Ties survive: each unique tensor is written once."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.cpu() for k, v in unique_state(model).items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    stored = next((v.dtype for v in state.values() if v.is_floating_point()), torch.float32)
    saved_as = model.config.dtype
    model.config.dtype = stored  # config.json names the dtype the weights are stored in
    try:
        model.config.save_pretrained(directory)
    finally:
        model.config.dtype = saved_as
    spec = recursion_spec_of(model)
    if spec is not None:
        refuse_stock_loaders(directory)
    atomic_write_json(directory / SPEC, {"recursion": spec.to_dict() if spec else None}, indent=2)
    with atomic_path(directory / WEIGHTS) as tmp:  # safetensors creates it 0600; atomic_path shares it
        save_file(state, str(tmp), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return directory


def refuse_stock_loaders(directory: Path) -> None:
    """Make transformers' ``from_pretrained`` (and so ``lm_eval --model hf``) raise :data:`HF_REFUSAL` on this dir."""
    config = json.loads((directory / CONFIG).read_text())
    atomic_write_json(directory / CONFIG, {**config, "transformers_weights": HF_REFUSAL}, indent=2, newline=True)


def is_saved_model_dir(directory: str | Path) -> bool:
    return (Path(directory) / SPEC).exists() and (Path(directory) / WEIGHTS).exists()


def saved_spec(directory: str | Path) -> RecursionSpec | None:
    """The recursion spec of a saved model, read without its weights (None: a saved model without recursion)."""
    data = json.loads((Path(directory) / SPEC).read_text()).get("recursion")
    return RecursionSpec.from_dict(data) if data else None


def check_finite(model: nn.Module, directory: str | Path) -> None:
    """A model with NaN/inf weights comes from a diverged run: refuse it rather than score a broken model."""
    bad = [name for name, param in model.named_parameters() if not torch.isfinite(param).all()]
    if bad:
        raise UserError(
            f"{directory}: {len(bad)} weight tensors are not finite (e.g. {bad[0]}): the run that saved "
            "it diverged; retrain it (e.g. with a lower lr or distill.temperature > 0)"
        )


def saved_dtype(directory: str | Path) -> torch.dtype:
    """The dtype a saved model's floating-point weights are stored in (read from the weights file's header)."""
    from safetensors import safe_open

    with safe_open(str(Path(directory) / WEIGHTS), framework="pt") as weights:
        for name in weights.keys():
            dtype = weights.get_slice(name).get_dtype()
            if dtype in ("F32", "BF16", "F16"):
                return {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}[dtype]
    return torch.float32


def load_converted(
    directory: str | Path, dtype: torch.dtype | None = torch.float32, device: str | torch.device = "cpu"
) -> nn.Module:
    """Rebuild the saved (converted or plain) model with its ties and adapters; identical logits.

    ``dtype``: the dtype to return (fp32 by default, whatever the weights are stored in); None: the stored dtype."""
    directory = Path(directory)
    if not is_saved_model_dir(directory):
        raise FileNotFoundError(f"{directory} is not a saved rrt model (expected {SPEC} and {WEIGHTS})")
    config = AutoConfig.from_pretrained(directory)
    config.__dict__.pop("transformers_weights", None)  # the stock-loader refusal; rrt reads the weights itself
    with no_init_weights():  # every tensor is overwritten below; random init would only cost time
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.tie_weights()  # skipped under no_init_weights; a tied LM head must alias the embedding again
    spec = recursion_spec_of(model)
    if spec is not None:
        convert_to_recursive(model, spec, initialize=False)
    try:
        state = load_file(str(directory / WEIGHTS))
    except Exception as error:  # truncated or overwritten file: name it and the way out
        raise UserError(
            f"{directory / WEIGHTS} is unreadable ({type(error).__name__}: {error}): the save was cut "
            "short or the file was changed; re-run the run that wrote it (resume=never) or restore it"
        ) from error
    expected = unique_state(model)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise UserError(
            f"{directory}: weights do not match the architecture (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    with torch.no_grad():  # in-place copies keep every tied Parameter object (and its storage) shared
        for name, tensor in state.items():
            _target(model, name).copy_(tensor)
    check_finite(model, directory)
    return model.to(device=device, dtype=dtype or saved_dtype(directory)).eval()


def round_to(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Round ``model``'s floating-point weights to ``dtype``'s precision in place, keeping their own dtype (and every
    tie): the in-memory model then equals the saved one loaded back, so evaluating it scores what was saved."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:  # each shared Parameter once
            if tensor.is_floating_point():
                tensor.copy_(tensor.to(dtype))
    return model


def _target(model: nn.Module, name: str) -> torch.Tensor:
    module_path, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_path) if module_path else model
    return getattr(module, leaf)
