"""rrt: Relaxed Recursive Transformers experiment suite (Bae et al., ICLR 2025)."""

import os

__version__ = "0.1.0"


def _offline_by_default() -> None:
    """Keep the Hugging Face libraries off the network unless the user asks for it.

    Everything rrt needs is local, yet ``datasets`` sends a HEAD request per lm-eval task load (its download
    counter) unless it is offline. ``datasets``, ``huggingface_hub`` and ``transformers`` read these variables
    once, at import, so they are set here, before any rrt module imports them. ``setdefault`` keeps the user's
    own choice: ``HF_HUB_OFFLINE=0`` turns the network back on for all three libraries.
    """
    offline = os.environ.get("HF_HUB_OFFLINE", "1")
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(key, offline)
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_UPDATE_DOWNLOAD_COUNTS", "0")


_offline_by_default()


def __getattr__(name: str):
    """``rrt.from_pretrained`` / ``rrt.save_pretrained``, imported on first use: ``import rrt`` stays free of torch."""
    if name in ("from_pretrained", "save_pretrained"):
        from rrt.recursive import io

        return {"from_pretrained": io.load_converted, "save_pretrained": io.save_converted}[name]
    raise AttributeError(f"module 'rrt' has no attribute {name!r}")
