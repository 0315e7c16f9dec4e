"""Qwen2: Llama layout with biases on q/k/v (biases are tied with their weights)."""

from rrt.models.family import llama_style

QWEN2 = llama_style("qwen2", ("qwen2",))
