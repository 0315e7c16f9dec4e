"""LM losses computed in token chunks: CE per exit, KD from a teacher, self-distillation across exits.

With a 262k vocabulary the logits dominate memory (B x T x V fp32). Each chunk's terms are computed under
``torch.utils.checkpoint``: the forward keeps only the chunk's inputs, and the backward recomputes that
chunk's logits, so at most one chunk of logits (per exit) is alive at a time while gradients stay exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

KD_LOSSES = ("none", "forward_kl", "reverse_kl", "jsd", "tvd")
EXIT_LOSSES = ("none", "weighted", "aggressive")
IGNORE_INDEX = -100


def kd_per_token(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str, temperature: float = 1.0) -> torch.Tensor:
    """Divergence between teacher and student next-token distributions, one value per row, scaled by T^2."""
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    if kind == "forward_kl":  # KL(p_T || p_S): equals MoR's -sum p_T log p_S up to the teacher entropy
        value = (t.exp() * (t - s)).sum(-1)
    elif kind == "reverse_kl":
        value = (s.exp() * (s - t)).sum(-1)
    elif kind == "jsd":  # lambda = 0.5
        m = torch.logaddexp(s, t) - math.log(2.0)
        value = 0.5 * (t.exp() * (t - m)).sum(-1) + 0.5 * (s.exp() * (s - m)).sum(-1)
    elif kind == "tvd":
        value = 0.5 * (t.exp() - s.exp()).abs().sum(-1)
    else:
        raise ValueError(f"unknown KD loss {kind!r}; supported: {list(KD_LOSSES[1:])}")
    return value * temperature**2


def exit_weights(kind: str, loops: int, coef: float) -> list[float]:
    """Coefficient of each loop's CE: weighted -> i / sum j; aggressive -> (c, ..., c, 1).

    ``none`` returns a single weight: only the final exit is computed (no hooks, no extra head passes).
    """
    if kind == "none":
        return [1.0]
    if kind == "weighted":
        total = loops * (loops + 1) / 2
        return [i / total for i in range(1, loops + 1)]
    if kind == "aggressive":
        return [coef] * (loops - 1) + [1.0]
    raise ValueError(f"unknown early-exit loss {kind!r}; supported: {list(EXIT_LOSSES)}")


@dataclass(frozen=True)
class LossSpec:
    exit_weights: tuple[float, ...] = (1.0,)  # one per exit, the final loop last
    self_kd: bool = False  # KD from the detached final output to every earlier exit, weighted like its CE
    kd: str = "none"  # teacher KD on the final output
    kd_weight: float = 0.0
    temperature: float = 1.0
    chunk_tokens: int = 512
    softcap: float | None = None  # Gemma-style final logit soft-capping


def _logits(hidden: torch.Tensor, head: torch.Tensor, softcap: float | None) -> torch.Tensor:
    logits = hidden @ head.T
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


def _chunk_terms(spec: LossSpec, head, labels, teacher_head, teacher_hidden, *exits) -> torch.Tensor:
    """Sums over one chunk: [CE per exit..., teacher KD, self-KD per earlier exit...]."""
    valid = labels != IGNORE_INDEX
    logits = [_logits(h, head, spec.softcap) for h in exits]
    terms = [F.cross_entropy(lg.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum") for lg in logits]
    if spec.kd != "none":
        teacher = _logits(teacher_hidden, teacher_head, spec.softcap).detach()
        terms.append((kd_per_token(logits[-1], teacher, spec.kd, spec.temperature) * valid).sum())
    else:
        terms.append(logits[-1].new_zeros(()))
    if spec.self_kd:
        final = logits[-1].detach()
        terms += [(kd_per_token(lg, final, "forward_kl", 1.0) * valid).sum() for lg in logits[:-1]]
    return torch.stack(terms)


def lm_loss(
    exits: list[torch.Tensor],
    head: torch.Tensor,
    labels: torch.Tensor,
    spec: LossSpec,
    teacher_hidden: torch.Tensor | None = None,
    teacher_head: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Next-token losses of hidden states (B, T, H) for each exit (final-normed), the final exit last.

    Returns ``loss`` (what is optimised), ``ce`` (final exit), ``kd`` (teacher), ``ce_exit{b}`` and
    ``self_kd_exit{b}`` per earlier exit; all means over the valid target tokens.
    """
    if len(exits) != len(spec.exit_weights):
        raise ValueError(f"{len(exits)} exits but {len(spec.exit_weights)} exit weights")
    targets = labels[:, 1:].reshape(-1)
    flat = [h[:, :-1].reshape(-1, h.shape[-1]) for h in exits]
    teacher_flat = teacher_hidden[:, :-1].reshape(-1, teacher_hidden.shape[-1]) if teacher_hidden is not None else None
    count = (targets != IGNORE_INDEX).sum().clamp(min=1)
    totals = None
    for start in range(0, targets.numel(), spec.chunk_tokens):
        part = slice(start, start + spec.chunk_tokens)
        args = (spec, head, targets[part], teacher_head, teacher_flat[part] if teacher_flat is not None else None)
        chunk_exits = [h[part] for h in flat]
        if torch.is_grad_enabled() and any(t.requires_grad for t in [head, *chunk_exits]):
            sums = checkpoint(_chunk_terms, *args, *chunk_exits, use_reentrant=False)
        else:
            sums = _chunk_terms(*args, *chunk_exits)
        totals = sums if totals is None else totals + sums
    means = totals / count
    loops = len(exits)
    ce, kd, self_kd = means[:loops], means[loops], means[loops + 1 :]
    loss = sum(w * c for w, c in zip(spec.exit_weights, ce)) + spec.kd_weight * kd
    if spec.self_kd:
        loss = loss + sum(w * s for w, s in zip(spec.exit_weights[:-1], self_kd))
    out = {"loss": loss, "ce": ce[-1], "kd": kd}
    for b in range(loops - 1):
        out[f"ce_exit{b + 1}"] = ce[b]
        if spec.self_kd:
            out[f"self_kd_exit{b + 1}"] = self_kd[b]
    return out
