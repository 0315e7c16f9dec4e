"""A converted model seen as K shared layers looped B times, run on rows at different loops and requests.

The layer math stays in Hugging Face: each batched call goes through the family's own decoder-layer module
(norms, q/k norms, attention, MLP). What this module adds is what HF's whole-model forward would otherwise
compute for a batch of *one* depth: per-row rotary embeddings and masks (rows have different positions and,
in Gemma 3, depths ``i`` and ``i + K`` may differ in attention type), and a :class:`~rrt.serving.kv.RowCache`
that routes each row's keys/values to its own (request, depth) cache.

Rows at different loops share one call when their depths have the same parameter leaves (strict recursion).
Relaxed models give every depth its own adapters: rows still share one call, through a copy of the layer whose
depth adapters are stacked into one LoRA applied per row (``rrt.serving.adapters``, the paper's serving), or
(``adapters="grouped"``) are grouped by depth, i.e. by loop, and each group runs its depth's module.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.models.llama.modeling_llama import rotate_half

from rrt.errors import UserError
from rrt.recursive.convert import parameter_leaves
from rrt.recursive.model import RecursiveModel, soft_cap
from rrt.serving.adapters import ADAPTER_CALLS, RowLoops, shared_but_adapters, stacked_layer
from rrt.serving.kv import KVPool, RowCache

SUPPORTED_FAMILIES = ("gemma3", "gemma", "llama", "qwen2", "gpt_neox")
FULL = "full_attention"
ATTENTIONS = ("padded", "per_item")
PER_ITEM = "rrt_per_item"


def per_item_attention(module, query, key, value, attention_mask, **kwargs):
    """SDPA run row by row on each row's own unpadded key range (the alternative to one padded, masked call).

    Decode rows (one query) attend to a contiguous key range (causal, maybe windowed), read off the mask;
    multi-token (prefill) calls fall back to the padded call.
    """
    if query.shape[2] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    outputs = []
    for row in range(query.shape[0]):
        valid = attention_mask[row, 0, 0].nonzero()
        keys = slice(int(valid[0]), int(valid[-1]) + 1)
        outputs.append(
            sdpa_attention_forward(
                module, query[row : row + 1], key[row : row + 1, :, keys], value[row : row + 1, :, keys], None, **kwargs
            )[0]
        )
    return torch.cat(outputs), None


AttentionInterface.register(PER_ITEM, per_item_attention)


def check_attention(kind: str) -> None:
    if kind not in ATTENTIONS:
        raise UserError(f"unknown attention {kind!r}; supported: {list(ATTENTIONS)}")


def check_adapters(kind: str) -> None:
    if kind not in ADAPTER_CALLS:
        raise UserError(f"unknown adapters {kind!r}; supported: {list(ADAPTER_CALLS)}")


def attention_of(layer: nn.Module) -> nn.Module:
    """The layer's attention module (``self_attn``; GPT-NeoX: ``attention``)."""
    return layer.self_attn if hasattr(layer, "self_attn") else layer.attention


@dataclass(frozen=True)
class Depth:
    layer: nn.Module
    layer_type: str
    window: int | None  # sliding-window size, None for full attention
    group: int  # depths with the same group share every parameter leaf


class DepthStack:
    """Embedding, per-depth layers, state propagation and head of one (recursive) causal LM."""

    def __init__(self, model: nn.Module, adapters: str = "stacked"):
        """``adapters``: how rows at different loops of a relaxed model run: "stacked" (one call, every loop's
        adapter stacked into one LoRA, as the paper serves them) or "grouped" (one call per loop present)."""
        check_adapters(adapters)
        recursive = RecursiveModel(model)
        family, spec = recursive.family, recursive.spec
        if family.name not in SUPPORTED_FAMILIES:
            raise UserError(
                f"serving supports families {list(SUPPORTED_FAMILIES)}, not {family.name!r} "
                "(its layers would need their own state propagation)"
            )
        if spec and spec.looping != "cycle" and spec.loops > 1:
            raise UserError(f"depth-wise batching needs looping=cycle; this model uses looping={spec.looping}")
        config = model.config
        layers = recursive.layers
        self.model, self.config = model, config
        self.num_depths = recursive.num_layers
        self.loops, self.shared = recursive.loops, recursive.shared
        self.norm = recursive.final_norm
        self.embed = model.get_input_embeddings()
        self.head = model.get_output_embeddings()
        self.rotary = model.get_decoder().rotary_emb
        self._rotary_typed = "layer_type" in inspect.signature(self.rotary.forward).parameters
        self.softcap = recursive.softcap
        types = getattr(config, "layer_types", None) or [FULL] * self.num_depths
        leaves: dict[tuple[int, ...], int] = {}
        self.depths = []
        for d, layer in enumerate(layers):
            key = tuple(id(m) for _, m in parameter_leaves(layer))
            window = getattr(config, "sliding_window", None) if types[d] == "sliding_attention" else None
            self.depths.append(Depth(layer, types[d], window, leaves.setdefault(key, len(leaves))))
        self.adapters = adapters
        attn = attention_of(layers[0])
        self.head_dim = getattr(attn, "head_dim", None) or attn.head_size  # GPT-NeoX: head_size
        self.kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        # the layer's cache argument: ``cache`` (transformers 5.x llama-style layers), ``layer_past`` (GPT-NeoX)
        forward = inspect.signature(layers[0].forward).parameters
        self._cache_arg = "layer_past" if "layer_past" in forward else "cache"

    @cached_property
    def stacked(self) -> list[tuple[nn.Module, RowLoops] | None]:
        """Per layer position, the layer with every loop's adapters stacked (relaxed models, ``adapters="stacked"``),
        else None. Built on first use: only a mixed-loop decode step needs it, not a stack used for its head."""
        out: list[tuple[nn.Module, RowLoops] | None] = [None] * self.shared
        for i in range(self.shared):
            at_i = [self.depths[b * self.shared + i] for b in range(self.loops)]
            loops_differ = len({d.group for d in at_i}) > 1
            if self.adapters == "stacked" and loops_differ and shared_but_adapters([d.layer for d in at_i]):
                out[i] = stacked_layer([d.layer for d in at_i])
        return out

    @contextmanager
    def attention(self, kind: str) -> Iterator[None]:
        """Run attention as one padded masked call per layer call ("padded") or per row ("per_item")."""
        check_attention(kind)
        if kind == "padded":
            yield
            return
        previous = self.config._attn_implementation
        self.config._attn_implementation = PER_ITEM
        try:
            yield
        finally:
            self.config._attn_implementation = previous

    def new_pool(self, slots: int, max_len: int) -> KVPool:
        weight = self.embed.weight
        return KVPool(slots, self.num_depths, self.kv_heads, max_len, self.head_dim, weight.dtype, weight.device)

    def rope(
        self, hidden: torch.Tensor, positions: torch.Tensor, depths: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [n, q, rotary dims], each row with its own depth's rotary (Gemma 3: local vs global base); the
        rotary dims are head_dim, or fewer with partial rotary (GPT-NeoX)."""
        types = [self.depths[d].layer_type for d in depths]
        cos = sin = None
        for layer_type in set(types):
            rows = torch.tensor([t == layer_type for t in types], device=hidden.device)
            args = (layer_type,) if self._rotary_typed else ()
            part_cos, part_sin = self.rotary(hidden, positions[rows], *args)
            if cos is None:
                cos, sin = part_cos.new_empty(2, *positions.shape, part_cos.shape[-1])
            cos[rows], sin[rows] = part_cos, part_sin
        return cos, sin

    def mask(self, positions: torch.Tensor, depths: list[int]) -> torch.Tensor:
        """Boolean [n, 1, q, kv] mask: causal over the row's own positions, within its depth's window."""
        keys = torch.arange(int(positions.max()) + 1, device=positions.device)
        windows = torch.tensor([self.depths[d].window or keys.numel() + 1 for d in depths], device=positions.device)
        query = positions[:, :, None]
        allowed = (keys <= query) & (keys > query - windows[:, None, None])
        return allowed[:, None]

    def run_shared_layer(
        self,
        i: int,
        hidden: torch.Tensor,
        slots: torch.Tensor,
        loops: torch.Tensor,
        positions: torch.Tensor,
        pool: KVPool,
    ) -> torch.Tensor:
        """Shared layer ``i`` on rows [n, q, H], row r at depth loops[r] * K + i; writes their keys/values."""
        depths = (loops * self.shared + i).tolist()
        groups: dict[int, list[int]] = {}
        for row, d in enumerate(depths):
            groups.setdefault(self.depths[d].group, []).append(row)
        if len(groups) == 1:
            return self._call(self.depths[depths[0]].layer, hidden, slots, depths, positions, pool)
        if self.stacked[i] is not None:
            layer, rows_of = self.stacked[i]
            rows_of.loops = loops
            return self._call(layer, hidden, slots, depths, positions, pool)
        out = torch.empty_like(hidden)
        for rows in groups.values():
            index = torch.tensor(rows, device=hidden.device)
            layer = self.depths[depths[rows[0]]].layer
            out[index] = self._call(
                layer, hidden[index], slots[index], [depths[r] for r in rows], positions[index], pool
            )
        return out

    def _call(self, layer: nn.Module, hidden, slots, depths: list[int], positions, pool: KVPool) -> torch.Tensor:
        depth_tensor = torch.tensor(depths, device=hidden.device)
        return layer(
            hidden,
            position_embeddings=self.rope(hidden, positions, depths),
            attention_mask=self.mask(positions, depths),
            position_ids=positions,
            **{self._cache_arg: RowCache(pool, slots, depth_tensor, positions)},
        )

    def propagate_state(
        self, depth: int, hidden: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor, pool: KVPool
    ) -> None:
        """State propagation (CALM): keys/values of a skipped depth from the copied exit hidden state.

        Runs only this depth's input norm and k/v projections (+ Gemma's k_norm, + rotary), the minimum the
        cache needs (GPT-NeoX's fused QKV projection computes the queries too); tested against what the full HF
        layer writes for the same input.
        """
        layer = self.depths[depth].layer
        attn = attention_of(layer)
        x = layer.input_layernorm(hidden)
        if hasattr(attn, "query_key_value"):  # GPT-NeoX: per head [q | k | v]
            fused = attn.query_key_value(x).view(*hidden.shape[:-1], -1, 3 * self.head_dim).transpose(1, 2)
            _, keys, values = fused.chunk(3, dim=-1)
        else:
            shape = (*hidden.shape[:-1], -1, self.head_dim)
            keys = attn.k_proj(x).view(shape).transpose(1, 2)
            values = attn.v_proj(x).view(shape).transpose(1, 2)
        if hasattr(attn, "k_norm"):
            keys = attn.k_norm(keys)
        cos, sin = self.rope(hidden, positions, [depth] * hidden.shape[0])
        rotary = keys[..., : cos.shape[-1]]  # partial rotary leaves the other dims as they are
        rotary = rotary * cos[:, None] + rotate_half(rotary) * sin[:, None]
        keys = torch.cat([rotary, keys[..., cos.shape[-1] :]], dim=-1)
        pool.write(slots, torch.full_like(slots, depth), positions, keys, values)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm + LM head (+ Gemma's final soft-capping) on exit hidden states [n, H]."""
        return soft_cap(self.head(self.norm(hidden)), self.softcap)
