"""Family adapters describe the module layout of one Hugging Face architecture.

Conversion code never names a concrete module: it asks the adapter where the decoder layers are, which
linears a depth-wise adapter wraps (and which rank group each belongs to), which modules are norms, and
which module is the final norm applied before the LM head (needed for early exits). Adding a family is
one small file under ``rrt/models/`` that calls :func:`register`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

RANK_GROUPS = ("q", "kv", "o", "ffn")


@dataclass(frozen=True)
class FamilyAdapter:
    """Where the parts of one architecture live, as dotted paths."""

    name: str
    model_types: tuple[str, ...]
    layers: str  # path of the ModuleList of decoder layers, from the CausalLM root
    final_norm: str  # path of the norm applied after the last layer, from the CausalLM root
    linears: dict[str, str]  # path inside a layer -> rank group (q, kv, o, ffn)
    norms: tuple[str, ...]  # paths inside a layer
    # A fused linear (e.g. Pythia's query_key_value) gets rank round(factor * r) so its parameter count
    # equals separate rank-r adapters on its parts (rrt-paper.md section 1.11: Pythia's counts imply 1.5r).
    fused_rank_factor: dict[str, float] = field(default_factory=dict)

    def layer_list(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.layers)

    def final_norm_module(self, model: nn.Module) -> nn.Module:
        return model.get_submodule(self.final_norm)


_REGISTRY: dict[str, FamilyAdapter] = {}


def register(adapter: FamilyAdapter) -> FamilyAdapter:
    for model_type in adapter.model_types:
        _REGISTRY[model_type] = adapter
    return adapter


def supported_families() -> list[str]:
    return sorted({a.name for a in _REGISTRY.values()})


def family_for(config) -> FamilyAdapter:
    """The adapter for an HF config (by ``model_type``), or a ValueError listing what is supported."""
    model_type = getattr(config, "model_type", None)
    if model_type not in _REGISTRY:
        raise ValueError(
            f"unsupported model family {model_type!r}; supported model_types: {sorted(_REGISTRY)} "
            f"(families: {supported_families()}). Add one with a small file in rrt/models/."
        )
    return _REGISTRY[model_type]


# q/k/v/o + gate/up/down as named by Llama, Gemma, Gemma 3, Qwen2 and Mistral in transformers.
LLAMA_STYLE_LINEARS = {
    "self_attn.q_proj": "q",
    "self_attn.k_proj": "kv",
    "self_attn.v_proj": "kv",
    "self_attn.o_proj": "o",
    "mlp.gate_proj": "ffn",
    "mlp.up_proj": "ffn",
    "mlp.down_proj": "ffn",
}


def llama_style(name: str, model_types: tuple[str, ...], norms: tuple[str, ...] = ("input_layernorm", "post_attention_layernorm")) -> FamilyAdapter:
    """Register a family laid out like Llama in transformers (``model.layers``, ``model.norm``, q/k/v/o + MLP)."""
    return register(
        FamilyAdapter(name=name, model_types=model_types, layers="model.layers", final_norm="model.norm", linears=LLAMA_STYLE_LINEARS, norms=norms)
    )
