"""Llama (TinyLlama 1.1B, SmolLM2): SwiGLU MLP, GQA, two RMSNorms per layer."""

from rrt.models.family import llama_style

LLAMA = llama_style("llama", ("llama",))
