"""Family adapters describe the module layout of one Hugging Face architecture.

Conversion code never names a concrete module: it asks the adapter where the decoder layers are, which
linears a depth-wise adapter wraps (and which rank group each belongs to), which modules are norms, and
which module is the final norm applied before the LM head (needed for early exits). Adding a family is
one small file under ``rrt/models/`` that calls :func:`register`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from rrt.errors import UserError

RANK_GROUPS = ("q", "kv", "o", "ffn")


@dataclass(frozen=True)
class FamilyAdapter:
    """Where the parts of one architecture live, as dotted paths."""

    name: str
    model_types: tuple[str, ...]
    layers: str  # path of the ModuleList of decoder layers, from the CausalLM root
    final_norm: str  # path of the norm applied after the last layer, from the CausalLM root
    linears: dict[str, str]  # path inside a layer -> rank group (q, kv, o, ffn); a fused linear: its first part's
    norms: tuple[str, ...]  # paths inside a layer
    # A fused linear (e.g. Pythia's query_key_value) -> the rank groups of its equal-width output parts, in order
    # (q, kv, kv). Its rank is chosen so that its adapter has as many parameters as separate adapters on the parts
    # would have with their groups' ranks (see fused_rank); so lora.ranks.q and lora.ranks.kv both apply to it.
    fused: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def groups_of(self, path: str) -> tuple[str, ...]:
        """The rank groups a linear serves: one, or each part of a fused linear."""
        return tuple(dict.fromkeys(self.fused.get(path, (self.linears[path],))))

    def layer_list(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.layers)

    def final_norm_module(self, model: nn.Module) -> nn.Module:
        return model.get_submodule(self.final_norm)


def fused_rank(part_ranks: tuple[int, ...], in_features: int, out_features: int) -> int:
    """Rank of one adapter on a fused linear whose ``len(part_ranks)`` equal output parts ask for these ranks.

    Separate rank-r_i adapters on parts of width out/n cost sum_i r_i (in + out/n) parameters; one rank-R adapter
    on the fused linear costs R (in + out). R is the nearest integer that spends the same: for Pythia's QKV with
    all ranks r this is exactly 1.5 r, the factor the paper's N-emb values imply (rrt-paper.md section 1.11).
    """
    part_width = out_features / len(part_ranks)
    return int(round(sum(part_ranks) * (in_features + part_width) / (in_features + out_features)))


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
        raise UserError(
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


def llama_style(
    name: str, model_types: tuple[str, ...], norms: tuple[str, ...] = ("input_layernorm", "post_attention_layernorm")
) -> FamilyAdapter:
    """Register a family laid out like Llama in transformers (``model.layers``, ``model.norm``, q/k/v/o + MLP)."""
    return register(
        FamilyAdapter(
            name=name,
            model_types=model_types,
            layers="model.layers",
            final_norm="model.norm",
            linears=LLAMA_STYLE_LINEARS,
            norms=norms,
        )
    )
