"""Sweeps on SLURM: which jobs still need to run, preemption checkpoints, and a sweep status table."""
