"""Hydra launcher plugin for rrt sweeps (discovered by Hydra through the ``hydra_plugins`` namespace package)."""
