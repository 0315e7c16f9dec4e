"""Chunked CE/KD/early-exit losses equal the naive full-logit computation, in value and gradient."""

import pytest
import torch
from torch.nn import functional as F

from rrt.training.losses import LossSpec, exit_weights, kd_per_token, lm_loss

V, H = 50, 16


def naive_kd(student, teacher, kind):
    p_s, p_t = F.softmax(student, -1), F.softmax(teacher, -1)
    if kind == "forward_kl":
        return (p_t * (p_t.log() - p_s.log())).sum(-1)
    if kind == "reverse_kl":
        return (p_s * (p_s.log() - p_t.log())).sum(-1)
    if kind == "jsd":
        m = (p_s + p_t) / 2
        return 0.5 * (p_t * (p_t.log() - m.log())).sum(-1) + 0.5 * (p_s * (p_s.log() - m.log())).sum(-1)
    return 0.5 * (p_t - p_s).abs().sum(-1)


def setup(loops=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    exits = [torch.randn(2, 9, H, generator=g, requires_grad=True) for _ in range(loops)]
    head = torch.randn(V, H, generator=g, requires_grad=True)
    labels = torch.randint(0, V, (2, 9), generator=g)
    labels[0, 3] = -100
    teacher_hidden, teacher_head = torch.randn(2, 9, 8, generator=g), torch.randn(V, 8, generator=g)
    return exits, head, labels, teacher_hidden, teacher_head


def naive(exits, head, labels, spec, teacher_hidden, teacher_head):
    targets = labels[:, 1:].reshape(-1)
    valid = targets != -100
    logits = [(h[:, :-1].reshape(-1, H) @ head.T) for h in exits]
    ce = [F.cross_entropy(lg, targets, ignore_index=-100) for lg in logits]
    loss = sum(w * c for w, c in zip(spec.exit_weights, ce))
    if spec.kd != "none":
        teacher = teacher_hidden[:, :-1].reshape(-1, 8) @ teacher_head.T
        loss = loss + spec.kd_weight * naive_kd(logits[-1], teacher, spec.kd)[valid].mean()
    if spec.self_kd:
        for w, lg in zip(spec.exit_weights[:-1], logits[:-1]):
            loss = loss + w * naive_kd(lg, logits[-1].detach(), "forward_kl")[valid].mean()
    return loss


def grads(loss, tensors):
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("kd", ["none", "forward_kl", "reverse_kl", "jsd", "tvd"])
def test_chunked_ce_and_kd_equal_naive(kd):
    exits, head, labels, th, thead = setup()
    spec = LossSpec(kd=kd, kd_weight=0.7 if kd != "none" else 0.0, chunk_tokens=5)
    got = lm_loss(exits, head, labels, spec, th, thead)["loss"]
    expected = naive(exits, head, labels, spec, th, thead)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads(got, [*exits, head]), grads(expected, [*exits, head])):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "kind,coef,self_kd", [("weighted", 0.0, False), ("aggressive", 0.1, False), ("aggressive", 0.1, True)]
)
def test_early_exit_losses_equal_naive(kind, coef, self_kd):
    exits, head, labels, th, thead = setup(loops=3)
    spec = LossSpec(
        exit_weights=tuple(exit_weights(kind, 3, coef)), self_kd=self_kd, kd="forward_kl", kd_weight=1.0, chunk_tokens=4
    )
    out = lm_loss(exits, head, labels, spec, th, thead)
    expected = naive(exits, head, labels, spec, th, thead)
    torch.testing.assert_close(out["loss"], expected, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads(out["loss"], [*exits, head]), grads(expected, [*exits, head])):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert set(out) >= {"ce", "kd", "ce_exit1", "ce_exit2"}


def test_exit_weights_match_the_paper():
    assert exit_weights("weighted", 2, 0) == [1 / 3, 2 / 3]
    assert exit_weights("weighted", 3, 0) == [1 / 6, 2 / 6, 3 / 6]
    assert exit_weights("aggressive", 2, 0.1) == [0.1, 1.0]
    assert exit_weights("none", 3, 0.5) == [1.0]  # only the final exit is computed


def test_forward_kl_is_zero_for_identical_distributions_and_temperature_scales():
    logits = torch.randn(4, V)
    assert kd_per_token(logits, logits, "forward_kl").abs().max() < 1e-6
    other = torch.randn(4, V)
    t2 = kd_per_token(other, logits, "forward_kl", temperature=2.0)
    torch.testing.assert_close(t2, 4 * naive_kd(other / 2, logits / 2, "forward_kl"), atol=1e-5, rtol=1e-5)


def test_unknown_kd_is_rejected():
    with pytest.raises(ValueError, match="supported"):
        kd_per_token(torch.zeros(1, 3), torch.zeros(1, 3), "cosine")


def test_frozen_head_gets_no_gradient_but_hidden_states_do():
    exits, head, labels, th, thead = setup()
    head.requires_grad_(False)
    spec = LossSpec(chunk_tokens=3)
    got = lm_loss(exits, head, labels, spec)["loss"]
    expected = naive(exits, head, labels, spec, th, thead)
    torch.testing.assert_close(grads(got, exits)[0], grads(expected, exits)[0], atol=1e-5, rtol=1e-5)
