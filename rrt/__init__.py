"""rrt: Relaxed Recursive Transformers experiment suite (Bae et al., ICLR 2025)."""

__version__ = "0.1.0"
