"""LM losses computed in token chunks: CE per exit, KD from a teacher, self-distillation across exits.

With a 262k vocabulary the logits dominate memory (B x T x V fp32). The loss is computed chunk by chunk and
each chunk's gradient (w.r.t. the hidden states and the LM head) is taken right away, inside the forward, so
at most one chunk of logits (per exit) is alive at a time, and the backward only scales the stored
gradients. This is the "fused linear cross-entropy" scheme; we measured it against checkpointing each chunk
(which recomputes the logits in the backward): same memory, about 2x less time (benchmarks/training.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from rrt.errors import UserError
from rrt.recursive.model import soft_cap

KD_LOSSES = ("none", "forward_kl", "reverse_kl", "jsd", "tvd")
EXIT_LOSSES = ("none", "weighted", "aggressive")
IGNORE_INDEX = -100


def kd_per_token(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str, temperature: float = 1.0
) -> torch.Tensor:
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
        raise UserError(f"unknown KD loss {kind!r}; supported: {list(KD_LOSSES[1:])}")
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
    raise UserError(f"unknown early-exit loss {kind!r}; supported: {list(EXIT_LOSSES)}")


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
    return soft_cap(hidden @ head.T, softcap)


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


def _chunks(
    spec: LossSpec, targets: torch.Tensor, teacher_flat: torch.Tensor | None
) -> Iterator[tuple[slice, torch.Tensor | None]]:
    """Token slices of ``spec.chunk_tokens`` positions, with the teacher's hidden states for each."""
    for start in range(0, targets.numel(), spec.chunk_tokens):
        part = slice(start, start + spec.chunk_tokens)
        yield part, (teacher_flat[part] if teacher_flat is not None else None)


def _term_weights(spec: LossSpec) -> torch.Tensor:
    """Coefficient of each chunk term in the optimised loss (same order as ``_chunk_terms``)."""
    weights = list(spec.exit_weights) + [spec.kd_weight]
    if spec.self_kd:
        weights += list(spec.exit_weights[:-1])
    return torch.tensor(weights)


class _FusedChunkedLoss(torch.autograd.Function):
    """Forward: term means and the weighted loss; gradients computed chunk by chunk and stored."""

    @staticmethod
    def forward(ctx, spec, targets, teacher_head, teacher_flat, count, head, *exits):
        weights = _term_weights(spec).to(head.device)
        grad_head = torch.zeros_like(head) if head.requires_grad else None
        grad_exits = [torch.zeros_like(h) for h in exits]
        totals = None
        for part, teacher in _chunks(spec, targets, teacher_flat):
            with torch.enable_grad():
                head_leaf = head.detach().requires_grad_(head.requires_grad)
                leaves = [h[part].detach().requires_grad_() for h in exits]
                sums = _chunk_terms(spec, head_leaf, targets[part], teacher_head, teacher, *leaves)
                wrt = ([head_leaf] if head.requires_grad else []) + leaves
                grads = torch.autograd.grad((weights * sums).sum() / count, wrt)
            if head.requires_grad:
                grad_head += grads[0]
            for grad_exit, grad in zip(grad_exits, grads[1:] if head.requires_grad else grads):
                grad_exit[part] = grad
            totals = sums.detach() if totals is None else totals + sums.detach()
        ctx.head_requires_grad = head.requires_grad
        ctx.save_for_backward(*([grad_head] if head.requires_grad else []), *grad_exits)
        means = totals / count
        ctx.mark_non_differentiable(means)
        return (weights * means).sum(), means

    @staticmethod
    def backward(ctx, grad_loss, _grad_means):
        saved = ctx.saved_tensors
        grad_head = saved[0] * grad_loss if ctx.head_requires_grad else None
        grad_exits = [g * grad_loss for g in (saved[1:] if ctx.head_requires_grad else saved)]
        return (None, None, None, None, None, grad_head, *grad_exits)


def _chunked_means(spec, targets, teacher_head, teacher_flat, count, head, exits) -> torch.Tensor:
    """Term means without gradients (validation): one chunk of logits at a time."""
    totals = None
    for part, teacher in _chunks(spec, targets, teacher_flat):
        sums = _chunk_terms(spec, head, targets[part], teacher_head, teacher, *[h[part] for h in exits])
        totals = sums if totals is None else totals + sums
    return totals / count


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
    teacher_flat = (
        teacher_hidden[:, :-1].reshape(-1, teacher_hidden.shape[-1]).detach() if teacher_hidden is not None else None
    )
    teacher_head = teacher_head.detach() if teacher_head is not None else None
    count = (targets != IGNORE_INDEX).sum().clamp(min=1)
    if torch.is_grad_enabled() and any(t.requires_grad for t in [head, *flat]):
        loss, means = _FusedChunkedLoss.apply(spec, targets, teacher_head, teacher_flat, count, head, *flat)
    else:
        means = _chunked_means(spec, targets, teacher_head, teacher_flat, count, head, flat)
        loss = (_term_weights(spec).to(means.device) * means).sum()
    loops = len(exits)
    ce, kd, self_kd = means[:loops], means[loops], means[loops + 1 :]
    out = {"loss": loss, "ce": ce[-1], "kd": kd}
    for b in range(loops - 1):
        out[f"ce_exit{b + 1}"] = ce[b]
        if spec.self_kd:
            out[f"self_kd_exit{b + 1}"] = self_kd[b]
    return out
