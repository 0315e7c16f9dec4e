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


def svd_factors(
    residual: torch.Tensor, rank: int, method: str = "full"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(down r x d_in, up d_out x r) with delta = up @ down: the plain LoRA pair a PEFT export or a stacked
        serving call needs."""
        return self.lora_A, self.lora_B

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(F.linear(x, self.lora_A), self.lora_B)


class DepthLaMDALinear(DepthLoRALinear):
    """LaMDA relaxation (Azizi et al., 2024) of one depth: y = W' x + B S A x.

    A (PMA, r x d_in) is frozen from construction, S (r x r, the low-dimensional adapter) trains, and B (PMB,
    d_out x r) trains until the optimizer freezes its columns one by one (``rrt.recursive.lamda``). A's
    ``requires_grad`` is False for the module's whole life and B's stays True, so the autograd graph is the same
    at every step (DDP and FSDP need that); B's progressive freeze is a mask inside the optimizer step.

    The mapping to recursion is ours (rrt-paper.md section 2): A = V_r^T, B = U_r and S = diag(S_r) of the depth's
    residual, so the init equals the LoRA SVD init and B's column j belongs to the j-th largest singular value.
    """

    def __init__(self, base: nn.Linear, rank: int):
        super().__init__(base, rank)
        self.lora_A.requires_grad_(False)
        self.lora_S = nn.Parameter(torch.zeros(rank, rank, device=base.weight.device, dtype=base.weight.dtype))

    def init_standard(self, generator: torch.Generator | None = None) -> None:
        """Zero-residual init: random orthonormal A and B, S = 0 (an exact no-op whose S still gets a gradient)."""
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

    def delta_weight(self) -> torch.Tensor:
        return self.lora_B @ self.lora_S @ self.lora_A

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lora_A, self.lora_B @ self.lora_S  # S folded into the up projection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(F.linear(F.linear(x, self.lora_A), self.lora_S), self.lora_B)


# lamda++ is LaMDA with per-matrix ranks from the residual spectra (rrt.recursive.allocation): same module
ADAPTER_CLASSES: dict[str, type[DepthLoRALinear]] = {
    "lora": DepthLoRALinear,
    "lamda": DepthLaMDALinear,
    "lamda++": DepthLaMDALinear,
}
