"""Greedy decoding of many requests with a fixed number of slots; one batched pass of the K shared layers
per step over items at different loops (continuous depth-wise batching, CDB).

An item is a request's in-flight token: (slot, loop b, hidden state, position). Each step runs the K shared
layers once over every occupied slot, whatever loop its item is in; then every item has finished one more
loop. An item leaves when it has run all B loops or its exit policy says so: final norm + LM head give its
token, the skipped depths get their keys/values by state propagation from the exit hidden state, and the
new token re-enters at loop 1 in the next step. A request that has produced all its tokens frees its slot,
which the queue refills before the next step (continuous batching); a new request's prompt is prefilled by
its own forward through all depths.

The same engine gives the baselines: an unconverted model is one "loop" of L layers, so continuous
scheduling is continuous sequence-wise batching (``batching="csb"``), and ``batching="static"`` (vanilla)
admits a new batch only when every request of the current one has finished; finished rows keep decoding
(outputs discarded) until then, as in padded static-batch generation.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from rrt.errors import UserError
from rrt.records import ENGINE_OF_BATCHING
from rrt.serving.policies import ExitPolicy, FullDepth
from rrt.serving.stack import DepthStack, check_attention

BATCHINGS = tuple(ENGINE_OF_BATCHING)  # static (vanilla) | csb | cdb


def continuous_batching(loops: int) -> str:
    """The continuous batching a model gets: sequence-wise for one loop, depth-wise for a recursive model."""
    return "cdb" if loops > 1 else "csb"


def check_batching(batching: str, loops: int) -> None:
    """``batching`` names what the engine does with a model of ``loops`` loops: a one-line error otherwise."""
    if batching not in BATCHINGS:
        raise UserError(f"unknown batching {batching!r}; supported: {list(BATCHINGS)}")
    if batching not in ("static", continuous_batching(loops)):
        raise UserError(
            f"batching={batching} does not apply to a model with {loops} loop(s): continuous batching of "
            f"{'a recursive' if loops > 1 else 'a plain'} model is {continuous_batching(loops)}"
        )


@dataclass(frozen=True)
class Request:
    rid: int
    prompt: list[int]
    max_new_tokens: int


@dataclass
class EngineStats:
    """Where the time went; tokens counts real requests' generated tokens only."""

    tokens: int = 0
    seconds: float = 0.0
    prefill_s: float = 0.0
    block_s: float = 0.0  # the shared layers of decode steps (what the paper's simulation times)
    head_s: float = 0.0
    propagate_s: float = 0.0  # state propagation of exited tokens' skipped depths
    policy_s: float = 0.0  # exit decisions (an exit head's MLP; a confidence policy's head call is in head_s)
    steps: int = 0
    head_calls: int = 0
    rows: int = 0  # sum over steps of the items in the batch (incl. static batching's finished rows)
    exit_loops: Counter = field(default_factory=Counter)  # decode tokens per exit loop

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    @property
    def mean_exit_loop(self) -> float:
        total = sum(self.exit_loops.values())
        return sum(b * n for b, n in self.exit_loops.items()) / total if total else float("nan")

    @property
    def overhead_s(self) -> float:
        """What the timed parts do not cover: scheduling, bookkeeping, embedding of new tokens."""
        return self.seconds - self.prefill_s - self.block_s - self.head_s - self.propagate_s - self.policy_s

    @property
    def mean_batch(self) -> float:
        return self.rows / self.steps if self.steps else 0.0


class Engine:
    """Serve greedy requests on ``model`` (recursive or not) with ``max_batch`` slots.

    ``head_batch``: exited items wait (out of the block batch) until this many, or every occupied item,
    await the final norm + LM head, which then runs once for all of them (MoR accumulates exits the same
    way). 1 = run the head in every step that has an exit. A large vocabulary makes the head a weight-bound
    pass as costly as many layers, so fewer, fuller head calls can pay for the idle slots. Policies that
    read logits (confidence) run the head every step anyway and emit at once.

    ``attention``: "padded" (one masked SDPA call over the batch, keys padded to the longest row) or
    "per_item" (one SDPA call per row on its own keys, linears and MLP still batched).

    ``batching``: "static" (vanilla), "csb" (a plain model) or "cdb" (a recursive model); None = the model's
    continuous batching.

    ``adapters``: a relaxed model's rows at different loops run in one call with every loop's adapter stacked
    into one LoRA ("stacked", the paper's serving) or in one call per loop ("grouped"); see rrt.serving.adapters.
    """

    def __init__(
        self,
        model: nn.Module,
        policy: ExitPolicy | None = None,
        max_batch: int = 8,
        batching: str | None = None,
        head_batch: int = 1,
        attention: str = "padded",
        adapters: str = "stacked",
    ):
        if max_batch < 1:
            raise UserError(f"max_batch must be >= 1, got {max_batch}")
        self.stack = DepthStack(model, adapters)
        self.batching = batching or continuous_batching(self.stack.loops)
        check_batching(self.batching, self.stack.loops)
        self.policy = policy or FullDepth()
        check_attention(attention)
        if not 1 <= head_batch <= max_batch:
            raise UserError(f"head_batch must be in 1..max_batch={max_batch}, got {head_batch}")
        self.max_batch, self.head_batch, self.attention = max_batch, head_batch, attention
        self.static = self.batching == "static"

    def generate(self, requests: Iterable[Request]) -> tuple[dict[int, list[int]], EngineStats]:
        """Generated token ids per request id (exactly ``max_new_tokens`` each; EOS does not stop a request,
        so every engine does the same work) and the run's timing statistics."""
        requests = list(requests)
        if not requests:
            return {}, EngineStats()
        max_len = max(len(r.prompt) for r in requests) + max(r.max_new_tokens for r in requests)
        run = _Run(self, requests, max_len)
        with torch.inference_mode(), self.stack.attention(self.attention):
            start = time.perf_counter()
            run.loop()
            run.stats.seconds = time.perf_counter() - start
        return run.outputs, run.stats


class _Run:
    """State of one ``Engine.generate`` call: the slots, the queue, the KV pool and the statistics."""

    def __init__(self, engine: Engine, requests: list[Request], max_len: int):
        self.engine, self.stack, self.policy = engine, engine.stack, engine.policy
        slots = engine.max_batch
        self.queue = deque(requests)
        self.outputs: dict[int, list[int]] = {r.rid: [] for r in requests}
        self.stats = EngineStats()
        self.pool = self.stack.new_pool(slots, max_len)
        weight = self.stack.embed.weight
        self.hidden = torch.zeros(slots, 1, weight.shape[1], dtype=weight.dtype, device=weight.device)
        self.loop_of = torch.zeros(slots, dtype=torch.long, device=weight.device)  # loops done by the item
        self.position = torch.zeros(slots, dtype=torch.long, device=weight.device)
        self.request: list[Request | None] = [None] * slots
        self.live = [False] * slots  # static batching: False for a finished request still in the batch
        self.awaiting = [False] * slots  # exited, waiting for a batched head call

    def loop(self) -> None:
        while self.queue or any(r is not None for r in self.request):
            self.admit()
            if any(r is not None for r in self.request):
                self.step()

    def admit(self) -> None:
        if self.engine.static and any(r is not None for r in self.request):
            return
        for slot, request in enumerate(self.request):
            if request is None and self.queue:
                self.prefill(slot, self.queue.popleft())

    def prefill(self, slot: int, request: Request) -> None:
        """The prompt's own forward through all depths; its last position gives the first new token."""
        stack, start = self.stack, time.perf_counter()
        device = self.hidden.device
        ids = torch.tensor([request.prompt], device=device)
        hidden = stack.embed(ids)
        positions = torch.arange(ids.shape[1], device=device)[None]
        slots = torch.tensor([slot], device=device)
        for b in range(stack.loops):
            for i in range(stack.shared):
                hidden = stack.run_shared_layer(
                    i, hidden, slots, torch.tensor([b], device=device), positions, self.pool
                )
        token = int(stack.logits(hidden[:, -1]).argmax(-1))
        self.request[slot], self.live[slot] = request, True
        self.position[slot] = ids.shape[1] - 1
        self.stats.prefill_s += time.perf_counter() - start
        self.emit(torch.tensor([slot], device=device), [token])

    def emit(self, slots: torch.Tensor, tokens: list[int]) -> None:
        """Record each slot's new token; finished requests leave, the others' tokens enter loop 1."""
        for slot, token in zip(slots.tolist(), tokens):
            request = self.request[slot]
            if self.live[slot]:
                self.outputs[request.rid].append(token)
                self.stats.tokens += 1
                self.live[slot] = len(self.outputs[request.rid]) < request.max_new_tokens
            if not self.live[slot] and not self.engine.static:
                self.request[slot] = None
        if self.engine.static and not any(self.live):
            self.request = [None] * len(self.request)
        self.hidden[slots, 0] = self.stack.embed(torch.tensor(tokens, device=slots.device))
        self.position[slots] += 1
        self.loop_of[slots] = 0

    def step(self) -> None:
        """One pass of the K shared layers over the running items, then the head for items awaiting it."""
        running = [s for s, r in enumerate(self.request) if r is not None and not self.awaiting[s]]
        if running:
            self._run_block(torch.tensor(running, device=self.hidden.device))
        awaiting = [s for s, a in enumerate(self.awaiting) if a]
        occupied = sum(r is not None for r in self.request)
        if awaiting and len(awaiting) >= min(self.engine.head_batch, occupied):
            slots = torch.tensor(awaiting, device=self.hidden.device)
            tokens = self._head(self.hidden[slots, 0]).argmax(-1).tolist()
            for slot in awaiting:
                self.awaiting[slot] = False
            self.emit(slots, tokens)

    def _run_block(self, slots: torch.Tensor) -> None:
        stack, stats = self.stack, self.stats
        hidden, positions = self.hidden[slots], self.position[slots][:, None]
        inputs, loops_before = hidden, self.loop_of[slots]
        start = time.perf_counter()
        for i in range(stack.shared):
            hidden = stack.run_shared_layer(i, hidden, slots, loops_before, positions, self.pool)
        stats.block_s += time.perf_counter() - start
        stats.steps += 1
        stats.rows += len(slots)
        loops = (loops_before + 1).tolist()
        final = [b == stack.loops for b in loops]

        needs = self.policy.needs_logits and not all(final)
        logits = self._head(hidden[:, 0]) if needs else None  # every row: decisions and final tokens
        start = time.perf_counter()
        exits = self._decide(slots, inputs, hidden, loops, final, logits)
        stats.policy_s += time.perf_counter() - start
        out = [r for r, e in enumerate(exits) if e]
        stay = torch.tensor([r for r, e in enumerate(exits) if not e], dtype=torch.long)
        self.hidden[slots[stay]] = hidden[stay]
        self.loop_of[slots[stay]] = loops_before[stay] + 1
        if not out:
            return
        self._propagate(hidden, slots, positions, loops, out)
        for r in out:
            if self.live[int(slots[r])]:
                stats.exit_loops[loops[r]] += 1
        if needs:  # the head already ran for these rows
            self.emit(slots[out], logits[out].argmax(-1).tolist())
            return
        self.hidden[slots[out]] = hidden[out]
        for r in out:
            self.awaiting[int(slots[r])] = True

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        logits = self.stack.logits(hidden)
        self.stats.head_calls += 1
        self.stats.head_s += time.perf_counter() - start
        return logits

    def _decide(self, slots, inputs, hidden, loops, final, logits) -> list[bool]:
        """Exit = finished all loops, or the policy says so for a non-final item (``inputs``: the block's input)."""
        pending = [r for r, f in enumerate(final) if not f]
        if not pending:
            return final
        requests = [self.request[int(slots[r])].rid for r in pending]
        steps = [len(self.outputs[rid]) for rid in requests]
        normed = previous = None
        if self.policy.needs_hidden:
            normed, previous = self.stack.norm(hidden[pending, 0]), self.stack.norm(inputs[pending, 0])
        decided = self.policy.exits(
            [loops[r] for r in pending], None if logits is None else logits[pending], requests, steps, normed, previous
        )
        exits = list(final)
        for r, e in zip(pending, decided):
            exits[r] = bool(e)
        return exits

    def _propagate(self, hidden, slots, positions, loops, out: list[int]) -> None:
        """Keys/values of the depths an exited item skipped, from its exit hidden state."""
        stack, start = self.stack, time.perf_counter()
        early = [r for r in out if loops[r] < stack.loops]
        if not early:
            return
        for depth in range(min(loops[r] for r in early) * stack.shared, stack.num_depths):
            rows = torch.tensor([r for r in early if loops[r] * stack.shared <= depth])
            stack.propagate_state(depth, hidden[rows], slots[rows], positions[rows], self.pool)
        self.stats.propagate_s += time.perf_counter() - start
