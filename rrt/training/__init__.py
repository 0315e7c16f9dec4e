"""Uptraining: Lightning module, losses, budget, checkpoints and the run driver."""
