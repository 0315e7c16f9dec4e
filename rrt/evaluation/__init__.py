"""Evaluation: the paper's 7 lm-eval tasks on local data, an exit-loop-aware lm-eval model, perplexity."""
