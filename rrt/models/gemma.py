"""Gemma (the paper's Gemma 2B architecture): GeGLU MLP, MQA, two RMSNorms per layer."""

from rrt.models.family import llama_style

GEMMA = llama_style("gemma", ("gemma",))
