"""Llama (TinyLlama 1.1B, SmolLM2): SwiGLU MLP, GQA, two RMSNorms per layer."""

from rrt.models.family import LLAMA_STYLE_LINEARS, FamilyAdapter, register

LLAMA = register(
    FamilyAdapter(
        name="llama",
        model_types=("llama",),
        layers="model.layers",
        final_norm="model.norm",
        linears=LLAMA_STYLE_LINEARS,
        norms=("input_layernorm", "post_attention_layernorm"),
    )
)
