"""Column vocabulary shared by the paper CSVs and our runs (rrt-paper.md section 1.7)."""

from __future__ import annotations

# Paper column -> the lm-eval task we run for it and the metric the paper reports for it.
TASKS: dict[str, tuple[str, str]] = {
    "LD": ("lambada_openai", "acc"),
    "HS": ("hellaswag", "acc_norm"),
    "PQ": ("piqa", "acc_norm"),
    "WG": ("winogrande", "acc"),
    "ARC-e": ("arc_easy", "acc_norm"),
    "ARC-c": ("arc_challenge", "acc_norm"),
    "OB": ("openbookqa", "acc_norm"),
}
TASK_COLUMNS = list(TASKS)
AVG = "Avg"
PAPER_PPL = ["ppl_slimpajama", "ppl_redpajama", "ppl_pg19"]

# What "ours" is scored by, best first (True: higher is better): the paper's 7-task average, else our held-out
# perplexity (eval.py), else the last validation CE logged in training, else the last training CE -- tiny CPU runs
# often have no lm-eval scores.
BASES: dict[str, bool] = {AVG: True, "ppl": False, "val_loss": False, "loss": False}
