"""Token budget -> optimizer steps, the same token count on any cluster shape."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from rrt.errors import UserError


@dataclass(frozen=True)
class Budget:
    tokens: int
    seq_len: int
    global_batch: int  # sequences per optimizer step, all devices and nodes together
    micro_batch_size: int  # sequences per device per forward pass
    world_size: int
    warmup_steps: int

    @property
    def accumulate(self) -> int:
        return self.global_batch // (self.micro_batch_size * self.world_size)

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * self.seq_len

    @property
    def steps(self) -> int:
        return self.tokens // self.tokens_per_step

    def validate(self) -> None:
        per_pass = self.micro_batch_size * self.world_size
        if self.global_batch % per_pass:
            raise UserError(
                f"budget.global_batch={self.global_batch} is not divisible by micro_batch_size x world size = "
                f"{self.micro_batch_size} x {self.world_size}; choose a global batch that is a multiple of {per_pass} "
                f"or change budget.micro_batch_size / trainer.devices / trainer.num_nodes"
            )
        if self.steps < 1:
            raise UserError(
                f"budget.tokens={self.tokens} is smaller than one optimizer step of {self.tokens_per_step} tokens "
                f"(global_batch {self.global_batch} x seq_len {self.seq_len}); raise budget.tokens"
            )
        if self.warmup_steps >= self.steps:
            raise UserError(f"budget.warmup_steps={self.warmup_steps} must be smaller than the {self.steps} steps")

    def summary(self) -> str:
        return (
            f"budget: {self.tokens:,} tokens = {self.steps:,} steps x {self.tokens_per_step:,} tokens "
            f"(global batch {self.global_batch} = micro {self.micro_batch_size} x world {self.world_size} x "
            f"accumulate {self.accumulate}, seq_len {self.seq_len}), warmup {self.warmup_steps} steps"
        )

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "steps": self.steps,
            "accumulate": self.accumulate,
            "tokens_per_step": self.tokens_per_step,
            "tokens_trained": self.steps * self.tokens_per_step,
        }
