"""LaMDA++ rank allocation: per-matrix ranks from normalised singular-value spectra, under the uniform-rank budget.

The LaMDA paper names the idea ("adaptive rank allocation ... via normalized spectrum analysis of pre-trained
model weights") but not the rule (rrt-paper.md section 2.2), and its public code has no LaMDA++. Ours:

- **Which spectrum.** The residual ``W_depth - W_shared`` of each depth, not the pretrained weight: in a relaxed
  recursive model the adapter's job is to give back what tying took away from that depth, and its SVD init is
  the residual's leading factors. A residual whose energy is spread over many directions needs a larger rank to
  be restored; the pretrained weight's spectrum says nothing about what tying removed.
- **Normalised.** ``p_i = s_i^2 / sum_j s_j^2``: the share of the residual's energy (squared Frobenius norm) that
  its i-th component holds, so matrices of any scale compete on equal terms. A rank-k fit keeps
  ``sum_{i<=k} p_i`` of it (Eckart-Young).
- **Rule.** Equal kept energy: every matrix gets the smallest rank whose fit keeps a common share ``tau`` of its
  residual's energy, ``sum_{i<=k} p_i >= tau``, with ``tau`` as high as the budget allows. Computed greedily, one
  rank at a time to the matrix that keeps the smallest share so far (max-min over matrices). A flatter spectrum
  keeps less energy per component, so it needs, and gets, more rank: of two matrices of the same shape, the flatter
  one (cumulative shares never larger) gets at least as much rank, up to one rank lost to a tie. Ranks are
  integers, capped at min(d_in, d_out) (the spectrum's length). Maximising the total kept energy per parameter
  instead would starve flat matrices, whose components are each worth little, for moderately steep ones.
- **Budget.** The adapter parameters of the same run with uniform ranks (the requested, capped rank of each
  linear): the allocation never exceeds it and stops only when no single extra rank fits, so it is met to within
  less than one rank's parameters of the cheapest matrix still growing.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Hashable, Mapping

import torch


def adapter_params(adapter: str, rank: int, in_features: int, out_features: int) -> int:
    """Parameters of one rank-``rank`` adapter: A and B, plus LaMDA's r x r S."""
    return rank * (in_features + out_features) + (rank * rank if adapter != "lora" else 0)


def normalised_spectrum(matrix: torch.Tensor) -> torch.Tensor:
    """Energy share of each singular component, largest first (all zeros for a zero matrix)."""
    energy = torch.linalg.svdvals(matrix.detach().to(torch.float32)).square()
    total = energy.sum()
    return energy / total if total > 0 else energy


def allocate(
    spectra: Mapping[Hashable, torch.Tensor], shapes: Mapping[Hashable, tuple[int, int]], budget: int, adapter: str
) -> dict[Hashable, int]:
    """Integer rank per matrix (keys of ``spectra``) spending at most ``budget`` parameters (see module docstring).

    ``shapes`` gives each matrix's (in_features, out_features). Once the matrix keeping the least energy cannot
    grow within the budget, the others still take what fits, so the budget is spent to within less than one rank
    of the cheapest matrix still growing. Ties go to the matrix listed first.
    """
    ranks = dict.fromkeys(spectra, 0)
    kept = {key: torch.cumsum(spectrum.double(), 0).tolist() for key, spectrum in spectra.items()}
    heap = [(0.0, index, key) for index, key in enumerate(spectra) if len(kept[key])]
    heapq.heapify(heap)
    left = budget
    while heap:
        _, index, key = heapq.heappop(heap)
        rank = ranks[key]
        cost = adapter_params(adapter, rank + 1, *shapes[key]) - adapter_params(adapter, rank, *shapes[key])
        if cost > left:  # every later rank of this matrix costs more: it is done growing
            continue
        ranks[key], left = rank + 1, left - cost
        if rank + 1 < len(kept[key]):
            heapq.heappush(heap, (kept[key][rank], index, key))
    return ranks


def allocate_from_residuals(
    uniform: Mapping[Hashable, int],
    shapes: Mapping[Hashable, tuple[int, int]],
    residual: Callable[[Hashable], torch.Tensor | None],
    adapter: str,
) -> dict[Hashable, int]:
    """Ranks for every matrix of ``uniform`` (its uniform, capped rank), spending what the uniform ranks spend.

    A matrix asked for rank 0 keeps no adapter, and one with a zero residual (nothing to restore, so no spectrum)
    keeps its uniform rank; the others share the rest of the budget by :func:`allocate`.
    """
    spectra = {}
    for key, rank in uniform.items():
        delta = residual(key) if rank > 0 else None
        if delta is not None and torch.any(delta):
            spectra[key] = normalised_spectrum(delta)
    budget = sum(adapter_params(adapter, uniform[key], *shapes[key]) for key in spectra)
    return {**uniform, **allocate(spectra, shapes, budget, adapter)}


def describe(allocation: Mapping[str, list[int]]) -> str:
    """One line for the log: each linear's rank range over depths."""
    return "ranks per linear (min-max over depths): " + ", ".join(
        f"{path} {min(ranks)}-{max(ranks)}" for path, ranks in allocation.items()
    )
