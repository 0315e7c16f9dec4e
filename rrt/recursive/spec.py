"""What a conversion does, as plain data: loops, looping order, init strategy, relaxation.

These dataclasses are what Hydra's ``recursion``/``init``/``lora`` groups fill in and what a saved model
stores in ``recursion.json``; the groups' keys, types and defaults are defined once, in their schemas
(``rrt.conf.schema``: ``RecursionConfig``, ``InitConfig``, ``LoRAConfig``, which ``LoRASpec`` extends).
``validate`` runs before any weight is touched, so a bad combination fails with a message that says what to change.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from rrt.conf.schema import (
    ADAPTERS,
    Init,
    InitConfig,
    Looping,
    LoRAConfig,
    LoRAInit,
    NormInit,
    RecursionConfig,
    SVDMethod,
    values,
)
from rrt.errors import UserError

INITS = values(Init)
NORM_INITS = values(NormInit)
LOOPINGS = values(Looping)
LORA_INITS = values(LoRAInit)
SVD_METHODS = values(SVDMethod)


@dataclass
class LoRASpec(LoRAConfig):
    """Depth-wise relaxation: one adapter per effective depth on every shared linear (the ``lora`` group's keys,
    ``LoRAConfig``, plus the LaMDA++ allocation that conversion adds).

    ``rank`` 0 means strict recursion (no adapters). ``ranks`` overrides the rank per component group
    (q, kv, o, ffn) as in the paper's Table G.1. The adapter scale is always exactly 1, so the SVD init
    reproduces ``W_depth`` (PEFT's ``lora_alpha / r`` would silently rescale it).
    """

    # lamda++: rank per linear path, one per depth, allocated from the residual spectra at conversion and saved
    # with the model, so a load or a count on the meta device rebuilds the same adapters without the spectra
    allocation: dict[str, list[int]] | None = None

    def rank_for(self, group: str) -> int:
        override = (self.ranks or {}).get(group)
        return self.rank if override is None else override

    @property
    def enabled(self) -> bool:
        return any(self.rank_for(g) > 0 for g in ("q", "kv", "o", "ffn"))


@dataclass
class RecursionSpec:
    """L layers -> K = L / loops shared layers executed ``loops`` times."""

    loops: int = RecursionConfig.loops
    looping: str = RecursionConfig.looping  # cycle: 1..K,1..K (the paper); sequence: 1,1,2,2,...
    init: str = InitConfig.name
    norm_init: str = InitConfig.norm_init  # source: like the linears; average / choice (first of group) / zero (App. F)
    lora: LoRASpec = field(default_factory=LoRASpec)
    seed: int = 0  # for random init and standard (zero-residual) adapter init

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RecursionSpec":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["lora"] = LoRASpec(**dict(values.get("lora") or {}))
        return cls(**values)

    def validate(self, num_layers: int | None = None) -> None:
        """Raise ValueError naming the bad value and what would be valid."""
        _choice("init", self.init, INITS)
        _choice("norm_init", self.norm_init, NORM_INITS)
        _choice("looping", self.looping, LOOPINGS)
        _choice("lora.init", self.lora.init, LORA_INITS)
        _choice("lora.adapter", self.lora.adapter, ADAPTERS)
        _choice("lora.svd", self.lora.svd, SVD_METHODS)
        _integer("recursion.loops", self.loops)
        if self.loops < 1:
            raise UserError(f"recursion.loops must be >= 1, got {self.loops}")
        _integer("lora.rank", self.lora.rank)
        for group, value in (self.lora.ranks or {}).items():
            if value is not None:
                _integer(f"lora.ranks.{group}", value)
        if not 0 <= self.lora.lamda_freeze_b_at <= 1:
            raise UserError(
                f"lora.lamda_freeze_b_at={self.lora.lamda_freeze_b_at} is a fraction of training: use a value in [0, 1]"
            )
        for group in ("q", "kv", "o", "ffn"):
            if self.lora.rank_for(group) < 0:
                raise UserError(
                    f"lora rank for {group!r} is {self.lora.rank_for(group)}; ranks must be >= 0 (0 = strict recursion)"
                )
        if num_layers is not None and num_layers % self.loops:
            valid = [b for b in range(1, num_layers + 1) if num_layers % b == 0]
            raise UserError(
                f"recursion.loops={self.loops} does not divide the model's {num_layers} layers; valid values: {valid}"
            )


def _integer(name: str, value: Any) -> None:
    """Ranks and loop counts are whole numbers: 2.5 would silently train 2 and record 2.5."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{name}={value!r} must be a whole number (e.g. {name}=64)")


def _choice(name: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise UserError(f"unknown {name} {value!r}; supported: {list(options)}")
