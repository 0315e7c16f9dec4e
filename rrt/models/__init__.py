"""Per-family adapters: where a causal LM keeps its decoder layers, linears and norms."""

from rrt.models import gemma, gemma3, gpt_neox, llama, qwen2  # noqa: F401  (registers the families)
from rrt.models.family import RANK_GROUPS, FamilyAdapter, family_for, supported_families

__all__ = ["RANK_GROUPS", "FamilyAdapter", "family_for", "supported_families"]
