"""Gemma 3 (text): the embedded default model, gemma-3-270m. Six norms per layer, incl. q/k norms."""

from rrt.models.family import LLAMA_STYLE_LINEARS, FamilyAdapter, register

GEMMA3 = register(
    FamilyAdapter(
        name="gemma3",
        model_types=("gemma3_text",),
        layers="model.layers",
        final_norm="model.norm",
        linears=LLAMA_STYLE_LINEARS,
        norms=(
            "input_layernorm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "post_feedforward_layernorm",
            "self_attn.q_norm",
            "self_attn.k_norm",
        ),
    )
)
