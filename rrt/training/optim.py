"""The optimizer of a run: parameter groups, and freezing by masks inside the optimizer step.

Freezing by toggling ``requires_grad`` mid-run changes the autograd graph, which DDP's reducer rejects ("parameters
that were not used in producing the loss") and FSDP cannot follow; zeroing a gradient does not freeze under AdamW,
whose momentum and decoupled weight decay keep moving the weight. :class:`ColumnFreezer` instead leaves the graph
alone and makes the optimizer step itself leave frozen columns exactly as they were: their gradient is zeroed
(so clipping ignores it), and the step's writes to them, to their AdamW moments and by weight decay are undone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.distributed.tensor import DTensor, Shard

from rrt.errors import UserError
from rrt.recursive.convert import recursion_spec_of
from rrt.recursive.lamda import freeze_end_step, pmb_schedules


def param_groups(model: nn.Module) -> list[dict]:
    """Trainable parameters in two groups: weight decay on matrices, none on norms and biases."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2]},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


class ColumnFreezer:
    """Freezes columns of parameters after scheduled optimizer steps, inside ``optimizer.step()``.

    ``schedules`` pairs each parameter with, per column (dim 1), the last optimizer step (1-based) allowed to change
    it. Call :meth:`mask_gradients` after the backward and before clipping (Lightning's ``on_before_optimizer_step``);
    the step's pre-hook saves the columns frozen at this step (values and optimizer-state entries of the same shape)
    and its post-hook writes them back. Any torch optimizer works; state it creates in a step starts at zero in frozen
    columns, as Adam's moments do.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedules: Sequence[tuple[nn.Parameter, Sequence[int]]]):
        for param, last_steps in schedules:
            split = isinstance(param, DTensor) and any(isinstance(p, Shard) and p.dim != 0 for p in param.placements)
            if param.ndim != 2 or param.shape[1] != len(last_steps) or split:
                raise UserError(
                    f"cannot freeze the {len(last_steps)} columns of a parameter of shape "
                    f"{tuple(param.shape)}{' split by column' if split else ''}: the column freeze "
                    "needs each rank to hold whole columns (FSDP2 shards rows, as trainer=fsdp does)"
                )
        self.optimizer = optimizer
        self.schedules = [(param, torch.tensor(list(last_steps), dtype=torch.long)) for param, last_steps in schedules]
        self.steps_done = 0  # optimizer steps already taken (set it when resuming)
        self._saved: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]] = []
        optimizer.register_step_pre_hook(self._save)
        optimizer.register_step_post_hook(self._restore)

    def frozen_columns(self, step: int) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """(parameter, indices of its columns that optimizer step ``step`` must leave unchanged), where any."""
        frozen = [(param, torch.nonzero(last < step).flatten()) for param, last in self.schedules]
        return [(param, columns.to(param.device)) for param, columns in frozen if len(columns)]

    def frozen_scalars(self, step: int) -> int:
        return sum(param.shape[0] * len(columns) for param, columns in self.frozen_columns(step))

    def mask_gradients(self) -> None:
        """Zero the gradient of the columns the coming step freezes (a frozen column has no gradient)."""
        with torch.no_grad():
            for param, columns in self.frozen_columns(self.steps_done + 1):
                if param.grad is not None:
                    _local(param.grad).index_fill_(1, columns, 0.0)

    def _state_tensors(self, param: nn.Parameter) -> dict[str, torch.Tensor]:
        state = self.optimizer.state.get(param, {})
        return {
            key: _local(value) for key, value in state.items() if torch.is_tensor(value) and value.shape == param.shape
        }

    def _save(self, optimizer, args, kwargs) -> None:
        self._saved = [
            (
                param,
                columns,
                _local(param.detach()).index_select(1, columns),
                {key: value.index_select(1, columns) for key, value in self._state_tensors(param).items()},
            )
            for param, columns in self.frozen_columns(self.steps_done + 1)
        ]

    def _restore(self, optimizer, args, kwargs) -> None:
        with torch.no_grad():
            for param, columns, values, state in self._saved:
                _local(param).index_copy_(1, columns, values)
                for key, tensor in self._state_tensors(param).items():
                    if key in state:
                        tensor.index_copy_(1, columns, state[key])
                    else:
                        tensor.index_fill_(1, columns, 0.0)
        self._saved = []
        self.steps_done += 1


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of an FSDP2-sharded tensor (some rows, every column), or the tensor itself."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def lamda_freezer(optimizer: torch.optim.Optimizer, model: nn.Module, total_steps: int) -> ColumnFreezer | None:
    """The freezer of LaMDA's PMB schedule (rrt.recursive.lamda) over ``total_steps``; None without LaMDA adapters."""
    spec = recursion_spec_of(model)
    if spec is None or not spec.lora.adapter.startswith("lamda"):
        return None
    end_step = freeze_end_step(spec.lora.lamda_freeze_b_at, total_steps)
    schedules = [(param, steps) for param, steps in pmb_schedules(model, end_step) if param.requires_grad]
    return ColumnFreezer(optimizer, schedules) if schedules else None


def build_optimizer(
    model: nn.Module, factory: Callable[..., torch.optim.Optimizer], total_steps: int
) -> tuple[torch.optim.Optimizer, ColumnFreezer | None]:
    """The run's optimizer over ``model``'s trainable parameters, with LaMDA's column freeze when it has one."""
    optimizer = factory(param_groups(model))
    return optimizer, lamda_freezer(optimizer, model, total_steps)


def updated_scalars(optimizer: torch.optim.Optimizer, freezer: ColumnFreezer | None, step: int) -> int:
    """How many scalar parameters optimizer step ``step`` may change: the optimizer's, minus frozen columns."""
    trainable = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
    return trainable - (freezer.frozen_scalars(step) if freezer is not None else 0)
