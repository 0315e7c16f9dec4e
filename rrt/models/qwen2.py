"""Qwen2: Llama layout with biases on q/k/v (biases are tied with their weights)."""

from rrt.models.family import LLAMA_STYLE_LINEARS, FamilyAdapter, register

QWEN2 = register(
    FamilyAdapter(
        name="qwen2",
        model_types=("qwen2",),
        layers="model.layers",
        final_norm="model.norm",
        linears=LLAMA_STYLE_LINEARS,
        norms=("input_layernorm", "post_attention_layernorm"),
    )
)
