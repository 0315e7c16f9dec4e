"""Gemma 3 (text): the embedded default model, gemma-3-270m. Four norms per layer plus q/k norms."""

from rrt.models.family import llama_style

GEMMA3 = llama_style(
    "gemma3",
    ("gemma3_text",),
    norms=(
        "input_layernorm",
        "post_attention_layernorm",
        "pre_feedforward_layernorm",
        "post_feedforward_layernorm",
        "self_attn.q_norm",
        "self_attn.k_norm",
    ),
)
