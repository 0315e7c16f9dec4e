"""``trainer=fsdp``: Lightning's FSDP2 strategy with rrt's tie-keeping units and atomic sharded checkpoints.

Lightning's :class:`ModelParallelStrategy` is its FSDP2 path (its ``FSDPStrategy`` is FSDP1) but asks the
LightningModule to shard itself in ``configure_model``; here the strategy applies :func:`rrt.training.fsdp.shard`
to the module's ``student`` instead, so the module stays strategy-agnostic. The mesh is 1-D over every rank.

A checkpoint ``<name>.ckpt`` is a small file (Lightning's metadata plus the name of its shard dir) and the shards
are a standard Lightning distributed checkpoint in ``shards/step<N>-<token>/``, written before the file is
renamed into place: a kill -9 at any moment leaves the previous ``last.ckpt`` and its shards intact.
"""

from __future__ import annotations

import shutil
import uuid
from datetime import timedelta
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.fabric.utilities.optimizer import _optimizers_to_device
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
)
from torch.distributed.fsdp import MixedPrecisionPolicy
from transformers import AutoModelForCausalLM
from transformers.initialization import no_init_weights

from rrt.recursive import convert_to_recursive, recursion_spec_of
from rrt.training.checkpoint import SHARDS_DIR, SHARDS_KEY, shards_of
from rrt.training.fsdp import dtype_of, shard, unalias_head


class RecursiveFSDPStrategy(ModelParallelStrategy):
    """FSDP2 over all ranks; ``param_dtype``/``reduce_dtype`` (e.g. ``bfloat16``/``float32``) set FSDP's mixed
    precision: parameters all-gathered and computed in ``param_dtype``, gradients reduced in ``reduce_dtype``,
    fp32 master weights and AdamW state sharded."""

    def __init__(
        self,
        param_dtype: str | None = None,
        reduce_dtype: str | None = None,
        reshard_after_forward: bool = True,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
    ):
        super().__init__(save_distributed_checkpoint=True, process_group_backend=process_group_backend, timeout=timeout)
        self.mp_policy = MixedPrecisionPolicy(param_dtype=dtype_of(param_dtype), reduce_dtype=dtype_of(reduce_dtype))
        self.reshard_after_forward = reshard_after_forward

    def setup_environment(self) -> None:
        self._data_parallel_size, self._tensor_parallel_size = self.num_nodes * self.num_processes, 1
        super().setup_environment()

    def setup(self, trainer: L.Trainer) -> None:
        """ModelParallelStrategy.setup with :func:`shard` in place of the module's ``configure_model``."""
        self.accelerator.setup(trainer)
        mesh = self.device_mesh["data_parallel"]
        shard(self.lightning_module.student, mesh, self.mp_policy, self.reshard_after_forward)
        self.model = self.precision_plugin.convert_module(self.model)
        self.model_to_device()
        self.barrier()
        if trainer.state.fn == TrainerFn.FITTING:
            self.setup_optimizers(trainer)
        self.setup_precision_plugin()
        if trainer.state.fn == TrainerFn.FITTING:
            _optimizers_to_device(self.optimizers, self.root_device)

    def save_checkpoint(self, checkpoint: dict, filepath, storage_options=None) -> None:
        path = Path(self.broadcast(str(filepath)))
        name = self.broadcast(f"step{checkpoint['global_step']:08d}-{uuid.uuid4().hex[:8]}")
        super().save_checkpoint(checkpoint, path.parent / SHARDS_DIR / name, storage_options)  # pops the tensors
        if self.is_global_zero:
            torch.save({**checkpoint, SHARDS_KEY: name}, path)

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict:
        shards = shards_of(Path(self.broadcast(str(checkpoint_path))))
        if shards is None:
            raise ValueError(
                f"{checkpoint_path} is not a sharded checkpoint (trainer=fsdp writes its own): resume "
                "it with the strategy that wrote it, or start over with resume=never"
            )
        return super().load_checkpoint(shards, weights_only=weights_only)

    def remove_checkpoint(self, filepath) -> None:
        if self.is_global_zero and Path(filepath).is_file():
            shards = shards_of(Path(filepath))
            if shards is not None:
                shutil.rmtree(shards, ignore_errors=True)
        super().remove_checkpoint(filepath)


def unsharded_copy(config) -> nn.Module:
    """An fp32 model of ``config`` with its recursion (ties, adapters) and no meaningful weights yet."""
    with no_init_weights():  # every tensor is overwritten by the caller
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.tie_weights()
    spec = recursion_spec_of(model)
    return convert_to_recursive(model, spec, initialize=False) if spec is not None else model


def trained_model(trainer: L.Trainer, student: nn.Module) -> nn.Module | None:
    """The trained student as one plain model on rank 0 (None on the other ranks); ``student`` itself when the
    strategy did not shard it. Every rank must call it: the full weights are all-gathered."""
    if not isinstance(trainer.strategy, RecursiveFSDPStrategy):
        return student
    unalias_head(student)
    state = get_model_state_dict(student, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not trainer.is_global_zero:
        return None
    model = unsharded_copy(student.config)
    model.load_state_dict(state)
    return model
