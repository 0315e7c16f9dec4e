"""The paper's throughput simulation (App. K; rrt-paper.md §1.10), with costs measured on the machine at hand.

The paper's 2-3x is simulated: per-token block times measured at growing batch sizes, combined with oracle exit
trajectories (teacher-forced over held-out text), for vanilla static batching, continuous sequence-wise
batching (CSB) and continuous depth-wise batching (CDB). This module does the same with three parts:

- a **cost model** (:class:`ModelCosts`, :func:`measure_costs`): seconds of one pass of the shared layers, of the
  head, the embedding, the state propagation of one skipped depth (all as functions of the rows in the call) and
  of one request's prefill (of its prompt length), measured on the real model through the engine's own calls,
  piecewise linear between the measured points; plus the model's weight and per-depth KV bytes, which set the
  largest batch a memory cap allows (:meth:`Memory.max_batch`): a smaller recursive model holds more requests;
- **exit trajectories** replayed as a request queue (:func:`trajectory_queue`, from
  :func:`rrt.serving.trajectories.exit_trajectories`);
- a **scheduler** (:func:`simulate`) that follows :class:`rrt.serving.engine.Engine` step for step (same slots,
  refill, static batching, exits, head batching), so the simulated steps, rows and head calls equal the engine's
  and only the clock is replaced by the cost model. An unconverted model (one "loop" of L layers) gives vanilla
  static batching and CSB; a recursive one CDB.

Two modes: ``paper`` counts only the decode steps' transformer blocks (head, embedding, prefill and the KV work
of exited tokens excluded, as the paper), ``full`` counts everything the engine times.

Choices the paper leaves open (it does not specify its simulator):

- **Queue**: every request is available at time 0, served first come first served (the paper: 20K samples, no
  arrival process). Request r replays document r mod D; its length is seeded, uniform in [min_new, max_new] (our
  held-out documents are all longer than a CPU-sized decode; the paper's lengths presumably come from its
  documents, which is why its PG19 rows have static = CSB).
- **Refill**: a freed slot is refilled before the next step. The new request's prompt runs as its own forward
  (not batched with decode steps) and gives its first token, which then enters loop 1 in that next step.
- **Per-step cost** depends only on the number of rows: measured with positions spread over the decode range
  and rows spread round robin over the loops (a relaxed model's per-loop calls), not on each step's actual mix.
  Python scheduling overhead is not modelled (the engine's measured seconds include it).
- **Static batching**: finished rows keep their slots and their compute until the batch's longest request ends.
- **Exits**: the first token of a request comes from its prefill (all depths); tokens 2.. exit at their oracle
  loop. Exited tokens' skipped depths get keys/values by state propagation: counted in ``full`` mode only, but
  every depth's KV memory is always reserved.
- **Memory**: a batch fits if weights + every request's keys/values for all depths at the longest context fit
  under the cap (no paging, activations and logits not counted).
- **Tokens**: every generated token counts, including the prefill's, as in the engine, so measured and
  simulated tokens/s are directly comparable.
"""

from __future__ import annotations

import bisect
import random
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from rrt.errors import UserError
from rrt.recursive.counting import count_params
from rrt.serving.engine import Engine, EngineStats, Request, check_batching, continuous_batching
from rrt.serving.policies import ExitPolicy, FullDepth, ReplayExit
from rrt.serving.stack import DepthStack
from rrt.serving.trajectories import Trajectory
from rrt.serving.workload import oracle_schedule

MODES = ("paper", "full")


@dataclass(frozen=True)
class Curve:
    """Seconds of one call as a function of its size (rows, or prompt tokens), linear between measured
    points and flat outside them (measure up to the largest size you simulate)."""

    points: tuple[tuple[int, float], ...]

    @classmethod
    def constant(cls, seconds: float) -> Curve:
        return cls(((1, seconds),))

    def __call__(self, size: int) -> float:
        if size <= 0:
            return 0.0
        sizes = [s for s, _ in self.points]
        i = bisect.bisect_left(sizes, size)
        if i == 0:
            return self.points[0][1]
        if i == len(sizes):
            return self.points[-1][1]
        (s0, t0), (s1, t1) = self.points[i - 1], self.points[i]
        return t0 + (t1 - t0) * (size - s0) / (s1 - s0)


@dataclass(frozen=True)
class Memory:
    """What sets the largest batch: the unique weights, and each request's keys/values at every depth."""

    weight_bytes: int
    kv_bytes_per_position: int  # keys + values of one request at one position, all depths

    def max_batch(self, memory_bytes: int, max_len: int) -> int:
        """Most requests whose full-length KV cache fits beside the weights under ``memory_bytes``."""
        free = memory_bytes - self.weight_bytes
        per_request = self.kv_bytes_per_position * max_len
        if free < per_request:
            raise UserError(
                f"a memory cap of {memory_bytes / 2**30:.2f} GiB holds the weights "
                f"({self.weight_bytes / 2**30:.2f} GiB) but not one request's KV cache "
                f"({per_request / 2**20:.1f} MiB at {max_len} positions); raise the cap"
            )
        return free // per_request


def memory_of(model: nn.Module) -> Memory:
    """A tied parameter counts once (a recursive model's weights are smaller); every depth keeps its own KV."""
    stack = DepthStack(model)
    size = stack.embed.weight.element_size()
    return Memory(count_params(model).total * size, 2 * stack.num_depths * stack.kv_heads * stack.head_dim * size)


@dataclass(frozen=True)
class ModelCosts:
    """What one model's serving costs on this machine: seconds per call, and its memory."""

    loops: int  # B (1 for an unconverted model)
    shared: int  # layers per loop: K, or L for an unconverted model
    block: Curve  # one pass of the ``shared`` layers over n decode rows
    head: Curve  # final norm + LM head over n rows
    embed: Curve  # embedding of n new tokens
    propagate: Curve  # state propagation of one skipped depth for n exited rows
    prefill: Curve  # one request's prompt forward through all depths + head, by prompt length
    memory: Memory = Memory(0, 0)


class _Probe:
    """The engine's own calls on one model, on synthetic rows: positions spread over ``start..max_len``, rows
    round robin over the loops (a relaxed model then runs its stacked or grouped call, as in a mixed-loop step)."""

    PARTS = ("block", "head", "embed", "propagate")

    def __init__(self, model: nn.Module, rows: int, start: int, max_len: int, adapters: str = "stacked"):
        self.model, self.stack = model, DepthStack(model, adapters)
        self.start, self.max_len = start, max_len
        self.pool = self.stack.new_pool(rows, max_len)
        weight = self.stack.embed.weight
        self.generator = torch.Generator().manual_seed(0)
        self.hidden = torch.randn(rows, 1, weight.shape[1], generator=self.generator, dtype=weight.dtype)

    def rows(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        index = torch.arange(n)
        positions = self.start + (2 * index + 1) * (self.max_len - 1 - self.start) // (2 * n)
        return index, index % self.stack.loops, positions[:, None]

    def seconds(self, part: str, n: int) -> float:
        with torch.inference_mode():
            begin = time.perf_counter()
            getattr(self, part)(n)
            return time.perf_counter() - begin

    def block(self, n: int) -> None:
        slots, loops, positions = self.rows(n)
        out = self.hidden[:n]
        for i in range(self.stack.shared):
            out = self.stack.run_shared_layer(i, out, slots, loops, positions, self.pool)

    def head(self, n: int) -> None:
        self.stack.logits(self.hidden[:n, 0])

    def embed(self, n: int) -> None:
        self.stack.embed(torch.zeros(n, dtype=torch.long))

    def propagate(self, n: int) -> None:
        slots, _, positions = self.rows(n)
        self.stack.propagate_state(self.stack.num_depths - 1, self.hidden[:n], slots, positions, self.pool)

    def prefill(self, length: int) -> float:
        """The engine's own prefill time for one request of ``length`` prompt tokens."""
        prompt = torch.randint(0, self.stack.embed.weight.shape[0], (length,), generator=self.generator).tolist()
        return (
            Engine(self.model, max_batch=1, adapters=self.stack.adapters).generate([Request(0, prompt, 1)])[1].prefill_s
        )

    def costs(self, curves: dict[str, Curve]) -> ModelCosts:
        return ModelCosts(self.stack.loops, self.stack.shared, memory=memory_of(self.model), **curves)


def measure_costs(
    models: Sequence[nn.Module],
    batch_sizes: Sequence[int],
    prompt_lengths: Sequence[int],
    max_len: int,
    repeats: int = 3,
    adapters: Sequence[str] | None = None,
) -> list[ModelCosts]:
    """Seconds of the engine's calls on each model: the shared layers, head, embedding and one depth's state
    propagation at each batch size, and prefills of each prompt length. Every point is timed ``repeats`` times
    after a warm-up, the models in turn (load from other processes hits them alike), and the fastest counts
    (other processes only add time)."""
    sizes, lengths = sorted(set(batch_sizes)), sorted(set(prompt_lengths))
    adapters = adapters or ["stacked"] * len(models)  # per model: how its relaxed loops run (engine's adapters=)
    probes = [_Probe(model, sizes[-1], lengths[0], max_len, kind) for model, kind in zip(models, adapters)]
    points: list[dict[str, list[tuple[int, float]]]] = [{} for _ in probes]
    jobs = [(part, n, lambda probe, part=part, n=n: probe.seconds(part, n)) for part in _Probe.PARTS for n in sizes]
    jobs += [("prefill", n, lambda probe, n=n: probe.prefill(n)) for n in lengths]
    for part, n, timed in jobs:
        times = [[] for _ in probes]
        for round_ in range(repeats + 1):
            for probe, out in zip(probes, times):
                seconds = timed(probe)
                if round_:  # round 0 warms up
                    out.append(seconds)
        for point, out in zip(points, times):
            point.setdefault(part, []).append((n, min(out)))
    return [probe.costs({part: Curve(tuple(p)) for part, p in point.items()}) for probe, point in zip(probes, points)]


def trajectory_queue(
    trajectories: Sequence[Trajectory], prompt_tokens: int, count: int, min_new: int, max_new: int, seed: int = 0
) -> tuple[list[Request], ReplayExit]:
    """``count`` requests replaying the teacher-forced oracle exits: request r is document r mod D's first
    ``prompt_tokens`` tokens and asks for a seeded number of new tokens in [min_new, max_new]. The simulator
    reads only a prompt's length, so prompts are placeholders."""
    short = [len(t.oracle) for t in trajectories if len(t.oracle) < prompt_tokens - 1 + max_new]
    if short:
        raise UserError(
            f"{len(short)} trajectories are shorter than prompt + max_new - 1 = "
            f"{prompt_tokens - 1 + max_new} tokens; use longer documents or fewer new tokens"
        )
    rng = random.Random(seed)
    requests = [Request(r, [0] * prompt_tokens, rng.randint(min_new, max_new)) for r in range(count)]
    replayed = [trajectories[r % len(trajectories)] for r in range(count)]
    return requests, ReplayExit(oracle_schedule(replayed, requests))


def simulate(
    costs: ModelCosts,
    requests: Sequence[Request],
    policy: ExitPolicy | None = None,
    max_batch: int = 8,
    batching: str | None = None,
    head_batch: int = 1,
    mode: str = "paper",
) -> EngineStats:
    """The engine's schedule for ``requests`` with ``max_batch`` slots, timed by ``costs``: the statistics the
    engine would report (``seconds`` is the simulated time of what ``mode`` counts)."""
    if mode not in MODES:
        raise UserError(f"unknown mode {mode!r}; supported: {list(MODES)}")
    batching = batching or continuous_batching(costs.loops)
    check_batching(batching, costs.loops)
    policy = policy or FullDepth()
    if policy.needs_logits or policy.needs_hidden:
        raise UserError(
            f"the simulator replays exit loops; {policy.describe()} reads the model's outputs: turn it into a "
            "schedule first (trajectories.confidence_exits / learned_exits) and replay it with ReplayExit"
        )
    if not 1 <= head_batch <= max_batch:
        raise UserError(f"head_batch must be in 1..max_batch={max_batch}, got {head_batch}")
    run = _Schedule(costs, list(requests), policy, max_batch, batching == "static", head_batch, mode == "full")
    run.loop()
    return run.stats


class _Schedule:
    """Mirror of ``engine._Run`` without tensors: the same slot, queue and exit bookkeeping, a simulated clock."""

    def __init__(
        self,
        costs: ModelCosts,
        requests: list[Request],
        policy: ExitPolicy,
        slots: int,
        static: bool,
        head_batch: int,
        full: bool,
    ):
        self.costs, self.policy, self.static, self.head_batch, self.full = costs, policy, static, head_batch, full
        self.queue = deque(requests)
        self.produced = {r.rid: 0 for r in requests}
        self.request: list[Request | None] = [None] * slots
        self.live = [False] * slots
        self.awaiting = [False] * slots
        self.loop_of = [0] * slots
        self.stats = EngineStats()

    def charge(self, part: str | None, seconds: float) -> None:
        """Add a cost to its part and to the total, when the mode counts it (paper mode: blocks only)."""
        if part != "block_s" and not self.full:
            return
        if part is not None:
            setattr(self.stats, part, getattr(self.stats, part) + seconds)
        self.stats.seconds += seconds

    def occupied(self) -> int:
        return sum(r is not None for r in self.request)

    def loop(self) -> None:
        while self.queue or self.occupied():
            self.admit()
            if self.occupied():
                self.step()

    def admit(self) -> None:
        if self.static and self.occupied():
            return
        for slot, request in enumerate(self.request):
            if request is None and self.queue:
                request = self.queue.popleft()
                self.charge("prefill_s", self.costs.prefill(len(request.prompt)))
                self.request[slot], self.live[slot] = request, True
                self.emit([slot])

    def emit(self, slots: list[int]) -> None:
        for slot in slots:
            request = self.request[slot]
            if self.live[slot]:
                self.produced[request.rid] += 1
                self.stats.tokens += 1
                self.live[slot] = self.produced[request.rid] < request.max_new_tokens
            if not self.live[slot] and not self.static:
                self.request[slot] = None
            self.loop_of[slot] = 0
        if self.static and not any(self.live):
            self.request = [None] * len(self.request)
        self.charge(None, self.costs.embed(len(slots)))

    def step(self) -> None:
        running = [s for s, r in enumerate(self.request) if r is not None and not self.awaiting[s]]
        if running:
            self.block(running)
        awaiting = [s for s, a in enumerate(self.awaiting) if a]
        if awaiting and len(awaiting) >= min(self.head_batch, self.occupied()):
            self.charge("head_s", self.costs.head(len(awaiting)))
            self.stats.head_calls += 1
            for slot in awaiting:
                self.awaiting[slot] = False
            self.emit(awaiting)

    def block(self, slots: list[int]) -> None:
        costs, stats = self.costs, self.stats
        self.charge("block_s", costs.block(len(slots)))
        stats.steps += 1
        stats.rows += len(slots)
        for slot in slots:
            self.loop_of[slot] += 1
        pending = [s for s in slots if self.loop_of[s] < costs.loops]
        decided = self.policy.exits(
            [self.loop_of[s] for s in pending],
            None,
            [self.request[s].rid for s in pending],
            [self.produced[self.request[s].rid] for s in pending],
        )
        early = [s for s, e in zip(pending, decided) if e]
        out = [s for s in slots if self.loop_of[s] == costs.loops] + early
        if early:
            for depth in range(min(self.loop_of[s] for s in early) * costs.shared, costs.loops * costs.shared):
                self.charge("propagate_s", costs.propagate(sum(self.loop_of[s] * costs.shared <= depth for s in early)))
        for slot in out:
            if self.live[slot]:
                stats.exit_loops[self.loop_of[slot]] += 1
            self.awaiting[slot] = True
