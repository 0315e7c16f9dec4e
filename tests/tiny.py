"""Tiny random models of every supported family, for fast unit tests."""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM

COMMON = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_attention_heads=4, max_position_embeddings=128)
TINY = {
    "gemma3": dict(
        model_type="gemma3_text",
        num_key_value_heads=1,
        head_dim=8,
        sliding_window=4,
        layer_types=["sliding_attention"] * 5 + ["full_attention"],
    ),
    "gemma": dict(model_type="gemma", num_key_value_heads=1, head_dim=8),
    "llama": dict(model_type="llama", num_key_value_heads=2),
    "qwen2": dict(model_type="qwen2", num_key_value_heads=2),
    "gpt_neox": dict(model_type="gpt_neox", use_parallel_residual=True, rotary_pct=0.5),
}


def tiny_config(family: str, num_layers: int = 6):
    values = {**COMMON, **TINY[family], "num_hidden_layers": num_layers}
    if family == "gemma3":
        values["layer_types"] = (values["layer_types"] * num_layers)[:num_layers]
    return AutoConfig.for_model(values.pop("model_type"), **values)


def tiny_model(family: str, num_layers: int = 6, seed: int = 0, randomize_norms: bool = True):
    """A random tiny model; norms get random weights too so that tying them is observable."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, num_layers)).eval()
    if randomize_norms:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if param.ndim == 1:
                    param.normal_(0.0, 0.1).add_(1.0 if "gpt_neox" in name and "weight" in name else 0.0)
    return model


def tokens(batch: int = 2, length: int = 10, vocab: int = 97, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))
