"""Per-depth KV cache for many requests at once: one preallocated pool indexed by (slot, depth, position).

Every effective depth keeps its own keys and values per request (tied weights do not mean tied caches:
depth ``d`` and ``d + K`` run the same shared layer on different hidden states). A slot is one request in
flight; its position ``p`` in the pool is the token's position in the sequence, so an item's valid keys are
simply ``0..p`` and a padded batch needs no per-row offsets.
"""

from __future__ import annotations

import torch


class KVPool:
    """Keys/values of shape [slots, depths, kv_heads, max_len, head_dim]."""

    def __init__(
        self,
        slots: int,
        depths: int,
        kv_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ):
        shape = (slots, depths, kv_heads, max_len, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len

    def write(
        self,
        slots: torch.Tensor,
        depths: torch.Tensor,
        positions: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
    ) -> None:
        """Store new keys/values [n, kv_heads, q, head_dim] of rows (slot, depth) at positions [n, q]."""
        if int(positions.max()) >= self.max_len:
            raise ValueError(
                f"position {int(positions.max())} exceeds the KV pool length {self.max_len}; "
                "raise the engine's max_len (prompt + new tokens)"
            )
        s, d = slots[:, None].expand_as(positions), depths[:, None].expand_as(positions)
        self.keys[s, d, :, positions] = keys.transpose(1, 2)
        self.values[s, d, :, positions] = values.transpose(1, 2)

    def read(self, slots: torch.Tensor, depths: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values [n, kv_heads, length, head_dim] of rows (slot, depth); entries past a row's position are
        stale and must be masked by the caller."""
        return self.keys[slots, depths, :, :length], self.values[slots, depths, :, :length]


class RowCache:
    """The ``cache`` object an HF attention module sees during one batched layer call.

    HF attention calls ``cache.update(k, v, layer_idx)``; the layer index is ignored because rows of one
    call may belong to different depths (loops) and requests: each row's (slot, depth) says where it lives.
    """

    def __init__(self, pool: KVPool, slots: torch.Tensor, depths: torch.Tensor, positions: torch.Tensor):
        self.pool, self.slots, self.depths, self.positions = pool, slots, depths, positions

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args, **kwargs):
        self.pool.write(self.slots, self.depths, self.positions, keys, values)
        return self.pool.read(self.slots, self.depths, int(self.positions.max()) + 1)
