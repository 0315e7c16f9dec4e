"""Depth-wise adapters around a shared linear: one per effective depth (Eq. 3 of the paper).

Written in the PEFT style (a base layer plus a low-rank delta) rather than with PEFT itself, because the
paper's semantics differ from PEFT's in two ways that matter: the scale is exactly 1 (PEFT multiplies by
``lora_alpha / r``, which silently rescales an SVD init), and the *base layer is shared* across depths
while each depth owns its adapter. Each wrapper holds a reference to the same shared ``nn.Linear``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def svd_factors(residual: torch.Tensor, rank: int, method: str = "full") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Truncated SVD of ``residual`` (out x in) in fp32: returns (U_r, S_r, V_r^T)."""
    residual = residual.detach().to(torch.float32)
    if method == "lowrank" and rank < min(residual.shape):
        # a few power iterations make the randomized factors accurate for the leading directions
        u, s, v = torch.svd_lowrank(residual, q=rank, niter=4)
        return u[:, :rank], s[:rank], v[:, :rank].T
    u, s, vh = torch.linalg.svd(residual, full_matrices=False)
    return u[:, :rank], s[:rank], vh[:rank]


class DepthLoRALinear(nn.Module):
    """y = W' x + B A x, with W' the shared linear (bias included) and (A, B) this depth's own adapter."""

    def __init__(self, base: nn.Linear, rank: int):
        super().__init__()
        self.base = base
        self.rank = rank
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **factory))

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:
        """The shared weight, so code that reads ``linear.weight`` (e.g. dtype checks) keeps working."""
        return self.base.weight

    def init_standard(self, generator: torch.Generator | None = None) -> None:
        """Standard LoRA init (App. C): A random, B = 0, so the adapter starts as an exact no-op."""
        with torch.no_grad():
            bound = 1.0 / math.sqrt(self.base.in_features)
            a = torch.empty(self.lora_A.shape, dtype=torch.float32).uniform_(-bound, bound, generator=generator)
            self.lora_A.copy_(a)
            self.lora_B.zero_()

    def init_from_residual(self, residual: torch.Tensor, method: str = "full") -> None:
        """SVD init (Eq. 4-5): B = U_r S_r, A = V_r^T, so W' + B A is the best rank-r fit of W_depth."""
        u, s, vh = svd_factors(residual, self.rank, method)
        with torch.no_grad():
            self.lora_B.copy_(u * s)
            self.lora_A.copy_(vh)

    def delta_weight(self) -> torch.Tensor:
        return self.lora_B @ self.lora_A

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(F.linear(x, self.lora_A), self.lora_B)


class DepthLaMDALinear(DepthLoRALinear):
    """LaMDA-style relaxation: y = W' x + B S A x with A frozen, S (r x r) trained, B frozen over time.

    The mapping to recursion is our own (rrt-paper.md section 2): A and B come from the SVD of the
    depth's residual (A = V_r^T, B = U_r) and S starts at diag(S_r), so the init equals the LoRA SVD init;
    only S (r^2 parameters) and, until :meth:`freeze_projection` (called by the training loop at
    ``lora.lamda_freeze_b_at`` of the run), B are updated. The paper freezes B's columns progressively; its
    public code only zeroes gradients, which AdamW momentum ignores, so we freeze B whole at one step.
    """

    def __init__(self, base: nn.Linear, rank: int):
        super().__init__(base, rank)
        self.lora_A.requires_grad_(False)
        self.lora_S = nn.Parameter(torch.zeros(rank, rank, device=base.weight.device, dtype=base.weight.dtype))

    def init_standard(self, generator: torch.Generator | None = None) -> None:
        """Zero-residual init: random orthonormal A and B, S = 0 (an exact no-op that can still learn)."""
        with torch.no_grad():
            a = torch.randn(self.base.in_features, self.rank, generator=generator)
            b = torch.randn(self.base.out_features, self.rank, generator=generator)
            self.lora_A.copy_(torch.linalg.qr(a).Q.T)
            self.lora_B.copy_(torch.linalg.qr(b).Q)
            self.lora_S.zero_()

    def init_from_residual(self, residual: torch.Tensor, method: str = "full") -> None:
        u, s, vh = svd_factors(residual, self.rank, method)
        with torch.no_grad():
            self.lora_B.copy_(u)
            self.lora_S.copy_(torch.diag(s))
            self.lora_A.copy_(vh)

    def freeze_projection(self) -> None:
        """Freeze B (PMB) for the rest of training; the optimizer skips parameters without gradients."""
        self.lora_B.requires_grad_(False)
        self.lora_B.grad = None

    def delta_weight(self) -> torch.Tensor:
        return self.lora_B @ self.lora_S @ self.lora_A

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(F.linear(F.linear(x, self.lora_A), self.lora_S), self.lora_B)


ADAPTER_CLASSES: dict[str, type[DepthLoRALinear]] = {"lora": DepthLoRALinear, "lamda": DepthLaMDALinear}
