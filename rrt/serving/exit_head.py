"""A learned exit head: from a token's hidden state after loop b, the probability that loop b already predicts what
the final loop predicts, so a live policy can exit without running the final loop and without an LM-head call.

The model is CALM's early-exit classifier (Schuster et al., 2022) and LoopUS's confidence head: a small MLP per
non-final loop over the final-normed hidden state (``inputs="hidden"``), or over it and its change across the loop
(``"hidden+change"``: the loop's normed output minus its normed input, the latent change Huginn's exit criteria
read; the input of loop 1 is the token's embedding), trained with binary cross-entropy on teacher-forced agreement
labels (argmax after loop b == argmax after loop B) while the recursive model stays frozen, so the head never changes
what the model predicts. A confidence threshold on the LM head's top-1 probability answers a different question
(is the model sure?) and exits few tokens of an uncertain small model whose loop 1 nevertheless agrees with its last
loop; the head is asked the right question. Its thresholds, one per non-final loop, are calibrated on held-back
tokens: the earliest exits that keep ``target_agreement`` of all predictions equal to the final loop's
(``calibrate_per_loop``; ``thresholds="shared"``: one threshold for all loops, the smallest that keeps it).

Saved beside the model it was fitted to (``exit_head.safetensors`` + ``exit_head.json``); :class:`LearnedExit`
(``rrt.serving.policies``) serves it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn
from torch.nn import functional as F

from rrt.errors import UserError
from rrt.recursive.model import RecursiveModel
from rrt.serving.trajectories import agreement_of, earliest_at, exit_summary, per_loop_thresholds
from rrt.utils.atomic import atomic_write_bytes, atomic_write_text

WEIGHTS, CONFIG = "exit_head.safetensors", "exit_head.json"
INPUTS = ("hidden", "hidden+change")  # what the head reads (see the module docstring)
THRESHOLDS = ("per_loop", "shared")  # how the exit thresholds are calibrated (see the module docstring)


def exit_features(inputs: str, hidden: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
    """The head's input from a loop's final-normed output ``hidden`` and input ``previous`` (both (n, H))."""
    if inputs == "hidden":
        return hidden
    return torch.cat([hidden, hidden - previous], dim=-1)


@dataclass(frozen=True)
class ExitHeadFit:
    """How the head is fitted: teacher-forced tokens (windows cut from documents), split into fit and calibration."""

    tokens: int = 65536
    window: int = 256
    width: int = 128
    epochs: int = 4
    batch_size: int = 512
    lr: float = 1e-3
    calibration: float = 0.25  # share of the windows held back to calibrate the thresholds and report
    target_agreement: float = 0.95
    inputs: str = "hidden"  # measured: benchmarks/results/exit_head_variants.json (docs/serving.md)
    thresholds: str = "per_loop"
    seed: int = 0

    def check(self) -> None:
        """A one-line error naming the key, before any compute."""

        def number(key: str) -> float:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UserError(f"exit_head.{key}={value!r} must be a number")
            return value

        for key in ("tokens", "window", "width", "epochs", "batch_size", "seed"):
            least = 0 if key == "seed" else 1
            if not isinstance(getattr(self, key), int) or number(key) < least:
                raise UserError(f"exit_head.{key}={getattr(self, key)!r} must be an integer >= {least}")
        if not 0 < number("calibration") < 1:
            raise UserError(f"exit_head.calibration={self.calibration} must be a fraction in (0, 1)")
        if not 0 < number("target_agreement") <= 1:
            raise UserError(f"exit_head.target_agreement={self.target_agreement} must be in (0, 1]")
        if not number("lr") > 0:
            raise UserError(f"exit_head.lr={self.lr} must be > 0")
        if self.inputs not in INPUTS:
            raise UserError(f"exit_head.inputs={self.inputs!r} is not one of {list(INPUTS)}")
        if self.thresholds not in THRESHOLDS:
            raise UserError(f"exit_head.thresholds={self.thresholds!r} is not one of {list(THRESHOLDS)}")


class ExitHead(nn.Module):
    """One MLP per non-final loop: features of a row's loop (``exit_features``) -> logit of "this loop agrees with the
    last"."""

    def __init__(
        self,
        hidden_size: int,
        loops: int,
        width: int = 128,
        thresholds: float | Sequence[float] = 1.0,
        inputs: str = "hidden",
    ):
        super().__init__()
        if loops < 2:
            raise UserError("an exit head needs a recursive model with at least 2 loops")
        if inputs not in INPUTS:
            raise UserError(f"unknown exit-head inputs {inputs!r}; supported: {list(INPUTS)}")
        self.hidden_size, self.loops, self.width = hidden_size, loops, width
        self.thresholds = per_loop_thresholds(thresholds, loops)  # one per non-final loop
        self.inputs = inputs
        features = hidden_size * (1 if inputs == "hidden" else 2)
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(features, width), nn.GELU(), nn.Linear(width, 1)) for _ in range(loops - 1)
        )

    def forward(self, features: torch.Tensor, loop: int) -> torch.Tensor:
        """Logits (n,) for rows that all finished ``loop`` (1-based, < loops), from their ``exit_features``."""
        return self.mlps[loop - 1](features.to(self.mlps[0][0].weight.dtype)).squeeze(-1)

    def scores(self, hidden: torch.Tensor, loops: list[int], previous: torch.Tensor | None = None) -> torch.Tensor:
        """Agreement probabilities of rows at different loops (each row's own loop's MLP), from their loop's
        final-normed output ``hidden`` and input ``previous`` (n, H)."""
        features = exit_features(self.inputs, hidden, previous)
        out = torch.empty(len(loops), device=hidden.device)
        index = torch.tensor(loops, device=hidden.device)
        for b in sorted(set(loops)):
            rows = (index == b).nonzero().squeeze(-1)
            out[rows] = torch.sigmoid(self(features[rows], b)).float()
        return out

    def save(self, directory: str | Path, report: dict | None = None) -> None:
        directory = Path(directory)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        atomic_write_bytes(directory / WEIGHTS, safetensors_bytes(tensors))  # the config, written last, commits it
        config = {
            "hidden_size": self.hidden_size,
            "loops": self.loops,
            "width": self.width,
            "thresholds": self.thresholds,
            "inputs": self.inputs,
        }
        atomic_write_text(directory / CONFIG, json.dumps({**config, **(report or {})}, indent=1))

    @classmethod
    def load(cls, directory: str | Path) -> ExitHead | None:
        """The head saved in ``directory`` (a model dir), or None when it has none."""
        directory = Path(directory)
        if not (directory / CONFIG).is_file():
            return None
        config = json.loads((directory / CONFIG).read_text())
        # a head saved before ``inputs`` existed read the hidden state only; before ``thresholds``, it had one
        inputs = config.get("inputs", "hidden")
        thresholds = config["thresholds"] if "thresholds" in config else config["threshold"]
        head = cls(config["hidden_size"], config["loops"], config["width"], thresholds, inputs)
        head.load_state_dict(load_file(str(directory / WEIGHTS)))
        return head.eval()


def loop_states(model: nn.Module, ids: torch.Tensor) -> list[torch.Tensor]:
    """Final-normed states (T, H) of a window's positions before loop 1 (the embedding) and after every loop."""
    recursive = RecursiveModel(model)
    embedded = recursive.final_norm(model.get_input_embeddings()(ids[None]))[0]
    return [embedded] + [h[0] for h in recursive.exit_hiddens(ids[None])]


def teacher_forced_features(
    model: nn.Module, windows: Iterable[torch.Tensor], inputs: str = "hidden"
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per non-final loop b, the head's features (N, F) at every position (``exit_features`` of ``inputs``), and
    ``agrees`` (B-1, N): whether loop b's argmax equals the final loop's there."""
    recursive = RecursiveModel(model)
    features: list[list[torch.Tensor]] = [[] for _ in range(recursive.loops - 1)]
    agrees = []
    with torch.inference_mode():
        for ids in windows:
            states = loop_states(model, ids)
            final = recursive.logits(states[-1]).argmax(-1)
            agrees.append(torch.stack([recursive.logits(h).argmax(-1) == final for h in states[1:-1]]))
            for b, out in enumerate(features, start=1):
                out.append(exit_features(inputs, states[b], states[b - 1]).float())
    return [torch.cat(f) for f in features], torch.cat(agrees, dim=1)


def token_windows(tokenizer, documents: Iterable[str], window: int, tokens: int) -> list[torch.Tensor]:
    """Consecutive ``window``-token pieces of the documents (a shorter tail is kept) until ``tokens`` are cut."""
    out, total = [], 0
    for document in documents:
        ids = torch.tensor(tokenizer(document).input_ids)
        for start in range(0, len(ids), window):
            piece = ids[start : start + window]
            if len(piece) < 2:
                break
            out.append(piece)
            total += len(piece)
            if total >= tokens:
                return out
    if not out:
        raise UserError("no text to fit the exit head on: the documents are empty")
    return out


NEVER = 1.0 + 1e-6  # a threshold no probability reaches


def outcome(scores: torch.Tensor, agrees: torch.Tensor, threshold: float | Sequence[float]) -> dict:
    """What exiting at the earliest loop scoring >= its ``threshold`` gives on teacher-forced tokens: exit fractions
    per loop, mean exit loop and agreement with the final loop (``scores``, ``agrees``: (B-1, N))."""
    exits = earliest_at(scores, threshold)
    summary = exit_summary([exits], loops=scores.shape[0] + 1)
    del summary["tokens"]
    return {**summary, "agreement": agreement_of(agrees, exits)}


def candidate_thresholds(scores: torch.Tensor, candidates: int) -> list[float]:
    """The scores themselves (sorted), evenly thinned to ``candidates`` values."""
    values = scores.flatten().unique()  # sorted
    if len(values) > candidates:
        values = values[torch.linspace(0, len(values) - 1, candidates).round().long()]
    return values.tolist()


def calibrate(scores: torch.Tensor, agrees: torch.Tensor, target: float, candidates: int = 400) -> float:
    """The smallest threshold whose earliest-loop exits keep ``target`` agreement with the final loop (NEVER
    when none does)."""
    for threshold in candidate_thresholds(scores, candidates):
        if agreement_of(agrees, earliest_at(scores, threshold)) >= target:
            return threshold
    return NEVER


def calibrate_per_loop(
    scores: torch.Tensor, agrees: torch.Tensor, target: float, candidates: int = 400, sweeps: int = 4
) -> list[float]:
    """One threshold per non-final loop: the lowest mean exit loop found that keeps ``target`` agreement.

    A shared threshold treats an exit after loop 1 like one after loop B-1, though it saves B-1 loops instead of 1;
    so, starting from the shared threshold (feasible: never exiting always is), each loop's threshold in turn moves
    to the candidate that lowers the mean exit loop most while the agreement holds (coordinate descent), until a
    sweep moves none. It never ends worse than the shared threshold on the tokens it is calibrated on."""
    thresholds = [calibrate(scores, agrees, target, candidates)] * scores.shape[0]
    grids = [candidate_thresholds(s, candidates) + [NEVER] for s in scores]
    best = earliest_at(scores, thresholds).float().mean()
    for _ in range(sweeps):
        moved = False
        for b, grid in enumerate(grids):
            for value in grid:
                trial = thresholds[:b] + [value] + thresholds[b + 1 :]
                exits = earliest_at(scores, trial)
                mean = exits.float().mean()
                if mean < best and agreement_of(agrees, exits) >= target:
                    thresholds, best, moved = trial, mean, True
        if not moved:
            break
    return thresholds


def head_scores(head: ExitHead, features: list[torch.Tensor]) -> torch.Tensor:
    """Agreement probabilities (B-1, N) of teacher-forced features."""
    with torch.inference_mode():
        return torch.stack([torch.sigmoid(head(x, b)).float() for b, x in enumerate(features, start=1)])


def evaluate_exit_head(model: nn.Module, head: ExitHead, windows: list[torch.Tensor]) -> dict:
    """The head at its thresholds on teacher-forced windows the fit never saw (e.g. held-out text), beside the
    oracle: tokens, AUC per loop, and the exits and agreement each gives."""
    features, agrees = teacher_forced_features(model, windows, head.inputs)
    scores = head_scores(head, features)
    return {
        "tokens": agrees.shape[1],
        "agree_rate": [float(a.float().mean()) for a in agrees],
        "auc": [auc(s, a) for s, a in zip(scores, agrees)],
        "learned": outcome(scores, agrees, head.thresholds),
        "oracle": outcome(agrees.float(), agrees, 1.0),
    }


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve (Mann-Whitney U over ranks); nan when one class is absent."""
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if not positives or not negatives:
        return float("nan")
    ranks = torch.empty_like(scores, dtype=torch.float64)
    ranks[scores.argsort()] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def fit_exit_head(model: nn.Module, tokenizer, documents: Iterable[str], fit: ExitHeadFit) -> tuple[ExitHead, dict]:
    """Fit and calibrate an exit head for ``model`` (frozen) on teacher-forced windows of ``documents``.

    Returns the head (thresholds set) and a report: token counts and, on the calibration windows, per-loop
    agreement base rates and AUCs and what the calibrated thresholds and the oracle give."""
    fit.check()
    recursive = RecursiveModel(model)
    if recursive.loops < 2:
        raise UserError("an exit head needs a recursive model with at least 2 loops (this one loops once)")
    windows = token_windows(tokenizer, documents, fit.window, fit.tokens)
    generator = torch.Generator().manual_seed(fit.seed)
    order = torch.randperm(len(windows), generator=generator).tolist()
    held = max(1, round(len(windows) * fit.calibration))
    if len(windows) - held < 1:
        raise UserError(f"exit_head.tokens={fit.tokens} gives {len(windows)} window(s): too few to fit and calibrate")
    train = teacher_forced_features(model, [windows[i] for i in order[held:]], fit.inputs)
    calibration = teacher_forced_features(model, [windows[i] for i in order[:held]], fit.inputs)
    return fit_on_features(train, calibration, model.get_input_embeddings().weight.shape[1], fit, generator)


def fit_on_features(
    train: tuple[list[torch.Tensor], torch.Tensor],
    calibration: tuple[list[torch.Tensor], torch.Tensor],
    hidden_size: int,
    fit: ExitHeadFit,
    generator: torch.Generator,
) -> tuple[ExitHead, dict]:
    """Fit a head on teacher-forced ``train`` features and labels (``teacher_forced_features``), then calibrate
    its thresholds and report on the ``calibration`` ones."""
    (train_x, train_y), (cal_x, cal_y) = train, calibration
    loops = len(train_x) + 1
    head = ExitHead(hidden_size, loops, fit.width, inputs=fit.inputs)
    optimizer = torch.optim.AdamW(head.parameters(), lr=fit.lr, weight_decay=0.01)
    count = train_y.shape[1]
    with torch.enable_grad():
        for _ in range(fit.epochs):
            for batch in torch.randperm(count, generator=generator).split(fit.batch_size):
                loss = sum(
                    F.binary_cross_entropy_with_logits(head(train_x[b][batch], b + 1), train_y[b][batch].float())
                    for b in range(loops - 1)
                )
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    head.eval()
    scores = head_scores(head, cal_x)
    if fit.thresholds == "per_loop":
        head.thresholds = calibrate_per_loop(scores, cal_y, fit.target_agreement)
    else:
        head.thresholds = per_loop_thresholds(calibrate(scores, cal_y, fit.target_agreement), loops)
    report = {
        "fit": asdict(fit),
        "fit_tokens": count,
        "calibration": {
            "tokens": cal_y.shape[1],
            "agree_rate": [float(a.float().mean()) for a in cal_y],
            "auc": [auc(s, a) for s, a in zip(scores, cal_y)],
            "learned": outcome(scores, cal_y, head.thresholds),
            "oracle": outcome(cal_y.float(), cal_y, 1.0),
        },
    }
    return head, report
