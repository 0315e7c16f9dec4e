"""Conversion of a pretrained causal LM into a (Relaxed) Recursive Transformer."""

from rrt.recursive.convert import convert_to_recursive, recursion_spec_of
from rrt.recursive.counting import ParamCounts, count_params, count_params_from_config
from rrt.recursive.spec import LoRASpec, RecursionSpec

__all__ = [
    "LoRASpec",
    "ParamCounts",
    "RecursionSpec",
    "convert_to_recursive",
    "count_params",
    "count_params_from_config",
    "recursion_spec_of",
]
