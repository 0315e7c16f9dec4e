"""Gemma (the paper's Gemma 2B architecture): GeGLU MLP, MQA, two RMSNorms per layer."""

from rrt.models.family import LLAMA_STYLE_LINEARS, FamilyAdapter, register

GEMMA = register(
    FamilyAdapter(
        name="gemma",
        model_types=("gemma",),
        layers="model.layers",
        final_norm="model.norm",
        linears=LLAMA_STYLE_LINEARS,
        norms=("input_layernorm", "post_attention_layernorm"),
    )
)
