"""GPT-NeoX (Pythia): fused QKV, biases everywhere, LayerNorm, parallel residual."""

from rrt.models.family import FamilyAdapter, register

GPT_NEOX = register(
    FamilyAdapter(
        name="gpt_neox",
        model_types=("gpt_neox",),
        layers="gpt_neox.layers",
        final_norm="gpt_neox.final_layer_norm",
        linears={
            "attention.query_key_value": "q",
            "attention.dense": "o",
            "mlp.dense_h_to_4h": "ffn",
            "mlp.dense_4h_to_h": "ffn",
        },
        norms=("input_layernorm", "post_attention_layernorm"),
        fused={"attention.query_key_value": ("q", "kv", "kv")},  # [q | k | v] rows, each hidden_size wide
    )
)
