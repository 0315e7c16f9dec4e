"""Typed schemas of the config groups, registered with Hydra's ConfigStore (the structured-config schema pattern).

A group's yaml names its schema first in its defaults list (``defaults: [base_lora, _self_]``), so the keys, their
types and their defaults live here once; Hydra rejects a wrong type (``lora.rank=abc``), a value outside a closed
set (``recursion.looping=spiral``) and an unknown key (``lora.rnak=8``, ``+lora.rnak=8``) while composing, naming
the key, and the entry points report that as one line with exit code 2 (``rrt.cli.errors.compose_errors``).
Ranges and cross-field rules stay in the preflight and the specs' ``validate()``.

This module imports nothing heavy: ``import rrt.conf`` (every entry point, before Hydra composes) registers them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, Dict, Optional  # OmegaConf 2.3 reads annotations at run time: no `X | None`, no `dict[...]`

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING
from omegaconf.errors import OmegaConfBaseException

from rrt.errors import UserError


class Choice(str, Enum):
    """One of a closed set of strings. A member is a ``str`` that prints, formats, compares, hashes and serialises
    (JSON, the run record) as its plain value, so code and records see ``"cycle"``, never ``Looping.cycle``.
    (OmegaConf 2.3 has no ``Literal`` support; it validates an Enum by member name, so names equal values.)"""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    def __repr__(self) -> str:
        return repr(self.value)


def values(choice: type[Choice]) -> tuple[str, ...]:
    return tuple(member.value for member in choice)


class Looping(Choice):
    cycle = "cycle"  # 1..K,1..K (the paper; needed for early exit)
    sequence = "sequence"  # 1,1,2,2,...


class Init(Choice):
    stepwise = "stepwise"
    average = "average"
    lower = "lower"
    upper = "upper"
    random = "random"


class NormInit(Choice):
    source = "source"  # like the linears
    average = "average"
    choice = "choice"  # the norms of the first layer of the group
    zero = "zero"


class LoRAInit(Choice):
    svd = "svd"  # B = U_r S_r, A = V_r^T of (W_depth - W_shared)
    zero = "zero"  # A random, B = 0


class SVDMethod(Choice):
    full = "full"  # torch.linalg.svd
    lowrank = "lowrank"  # torch.svd_lowrank (see benchmarks/conversion.py for the choice)


class Variant(Choice):
    recursive = "recursive"
    full = "full"
    reduced = "reduced"


class KDLoss(Choice):
    none = "none"
    forward_kl = "forward_kl"
    reverse_kl = "reverse_kl"
    jsd = "jsd"
    tvd = "tvd"


class ExitLoss(Choice):
    none = "none"
    weighted = "weighted"
    aggressive = "aggressive"


ADAPTERS = ("lora", "lamda", "lamda++")  # a plain str key: "lamda++" cannot be an Enum member name


def _no_overrides() -> Dict[str, Optional[int]]:
    return {"q": None, "kv": None, "o": None, "ffn": None}


@dataclass
class RecursionConfig:
    """``recursion``: L layers -> K = L / loops shared layers executed ``loops`` times (loops must divide L)."""

    loops: int = 2
    looping: Looping = Looping.cycle
    # Per-depth state: every effective depth keeps its own KV-cache slot, and for Gemma 3 its own attention type
    # (sliding or full) as in the original model at that depth, so one shared layer may run sliding attention in
    # loop 1 and full attention in loop 2. This keeps the original model's attention schedule by depth.


@dataclass
class InitConfig:
    """``init``: how the shared layers are initialised from the pretrained ones (the option names itself)."""

    name: Init = Init.stepwise
    norm_init: NormInit = NormInit.source


@dataclass
class LoRAConfig:
    """``lora``: depth-wise relaxation, one adapter per effective depth on every shared linear (q,k,v,o,gate,up,down).

    The adapter scale is exactly 1 (no ``lora_alpha / r``), so the SVD init reproduces W_depth at full rank.
    ``rrt.recursive.LoRASpec`` is this plus what conversion adds (the LaMDA++ allocation).
    """

    rank: int = 0  # 0 = strict Recursive Transformer; the paper uses 64/128/256/512
    init: LoRAInit = LoRAInit.svd
    # lora (B A) | lamda (B S A: A frozen, S trained, B frozen column by column) | lamda++ (lamda with per-matrix
    # ranks from the residual spectra; see lora/lamda_plus)
    adapter: str = "lora"
    # per-component rank overrides (Table G.1); None = use rank
    ranks: Dict[str, Optional[int]] = field(default_factory=_no_overrides)
    svd: SVDMethod = SVDMethod.full
    freeze_shared: bool = False  # the paper trains all parameters; true = PEFT-faithful: only adapters (lamda_peft)
    # lamda/lamda++ only: t_i = floor(lamda_freeze_b_at x optimizer steps). Column j of B (0-based, the j-th largest
    # singular value) is updated by steps 1..floor((j+1) t_i / r) and never after, so B is wholly frozen after t_i
    # steps and then only S trains. The paper gives no formula (rrt-paper.md section 2.2); 0.25 is our choice: "the
    # early fine-tuning stages". Frozen columns are masked inside the optimizer step (rrt/training/optim.py).
    lamda_freeze_b_at: float = 0.25


@dataclass
class VariantConfig:
    """``variant``: the paper's model (recursive) or one of its two baselines (full, reduced)."""

    name: Variant = Variant.recursive


@dataclass
class DistillConfig:
    """``distill``: knowledge distillation from the full-size model (App. I); loss = CE + weight * KD."""

    loss: KDLoss = KDLoss.none
    weight: float = 0.0  # the paper does not state the CE/KD mixing weight; the KD options use 1.0 (our choice)
    temperature: float = 1.0  # MoR's code uses T=1; KD is scaled by T^2 (Hinton) so gradients keep their size
    teacher: Optional[str] = None  # None: the original pretrained model (model.name); or a run dir / saved model dir


@dataclass
class EarlyExitConfig:
    """``early_exit``: the exit losses (none: only the final loop's CE)."""

    loss: ExitLoss = ExitLoss.none
    coef: float = 0.0  # aggressive: the intermediate loops' coefficient (final loop 1)
    self_kd: bool = False  # + KD from the detached final output to each exit


@dataclass
class BudgetConfig:
    """``budget``: a token budget -> optimizer steps (every option sets every key)."""

    tokens: int = MISSING  # total training tokens -> steps = tokens / (global_batch * seq_len)
    seq_len: int = MISSING
    global_batch: int = MISSING  # sequences per optimizer step, over all devices and nodes
    micro_batch_size: int = MISSING  # sequences per device per forward; accumulation = global / (micro * world)
    warmup_steps: int = MISSING
    val_check_interval: int = MISSING  # optimizer steps between held-out evaluations
    val_batches: int = MISSING
    log_every_n_steps: int = MISSING
    checkpoint_every_n_steps: int = MISSING


SCHEMAS = {
    "recursion": RecursionConfig,
    "init": InitConfig,
    "lora": LoRAConfig,
    "variant": VariantConfig,
    "distill": DistillConfig,
    "early_exit": EarlyExitConfig,
    "budget": BudgetConfig,
}


def register() -> None:
    """``<group>/base_<group>``: the schema a group's options name first in their defaults lists."""
    store = ConfigStore.instance()
    for group, schema in SCHEMAS.items():
        store.store(group=group, name=f"base_{group}", node=schema)


def unknown_keys(cfg: Any) -> list[str]:
    """Keys of the typed groups in a composed config that their schema does not have (``+lora.rnak=8``: Hydra's
    ``+`` adds a key even to a typed node)."""
    unknown = []
    for group, schema in SCHEMAS.items():
        node = cfg.get(group) if hasattr(cfg, "get") else None
        if node is None or not hasattr(node, "keys"):
            continue
        known = {f.name for f in fields(schema)}
        unknown += [f"{group}.{key}" for key in node.keys() if key not in known]
    return unknown


def check_keys(cfg: Any) -> None:
    """Refuse a composed config with a key no schema has, naming it and the group's keys."""
    unknown = unknown_keys(cfg)
    if unknown:
        group = unknown[0].split(".", 1)[0]
        keys = [f.name for f in fields(SCHEMAS[group])]
        raise UserError(f"unknown config key {', '.join(unknown)}; the {group} group's keys are {keys}")


def compose_error_line(error: BaseException) -> str:
    """Hydra's multi-line composition error (and the OmegaConf error under it) as one line that names the key:
    ``Error merging override lora.rank=abc: Value 'abc' of type 'str' could not be converted to Integer``."""

    def lines(exception: BaseException) -> list[str]:
        text = str(exception).split("\nConfig search path:")[0]
        kept = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith(("full_key:", "object_type=", "reference_type=", "See https://hydra.cc")):
                continue
            if raw.startswith("\t") and kept and kept[-1].endswith((":", ",")):
                kept[-1] += f" {line},"  # an option of a list ("Available options in 'lora':")
            else:
                kept.append(line)
        return [line.rstrip(",") for line in kept]

    main = lines(error)
    cause = lines(error.__cause__) if isinstance(error.__cause__, OmegaConfBaseException) else []
    if not main:
        return " ".join(cause) or type(error).__name__
    head, rest = main[0].rstrip("."), main[1:]
    if any("not in '" in line for line in cause):  # a key no schema has: Hydra's "use +key=value" would not help
        rest = [line for line in rest if not line.startswith("To append to your config use")]
    line = f"{head}: {' '.join(cause)}" if cause else head
    return f"{line} ({' '.join(rest)})" if rest else line
