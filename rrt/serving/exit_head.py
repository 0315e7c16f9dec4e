"""A learned exit head: from a token's hidden state after loop b, the probability that loop b already predicts what
the final loop predicts, so a live policy can exit without running the final loop and without an LM-head call.

The model is CALM's early-exit classifier (Schuster et al., 2022) and LoopUS's confidence head: a small MLP per
non-final loop over the final-normed hidden state, trained with binary cross-entropy on teacher-forced agreement
labels (argmax after loop b == argmax after loop B) while the recursive model stays frozen, so the head never changes
what the model predicts. A confidence threshold on the LM head's top-1 probability answers a different question
(is the model sure?) and exits few tokens of an uncertain small model whose loop 1 nevertheless agrees with its last
loop; the head is asked the right question. Its threshold is calibrated on held-back tokens: the smallest score at
which the exits it allows keep ``target_agreement`` of all predictions equal to the final loop's.

Saved beside the model it was fitted to (``exit_head.safetensors`` + ``exit_head.json``); :class:`LearnedExit`
(``rrt.serving.policies``) serves it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn
from torch.nn import functional as F

from rrt.errors import UserError
from rrt.recursive.model import RecursiveModel
from rrt.serving.trajectories import agreement_of, earliest_at, exit_summary
from rrt.utils.atomic import atomic_write_bytes, atomic_write_text

WEIGHTS, CONFIG = "exit_head.safetensors", "exit_head.json"


@dataclass(frozen=True)
class ExitHeadFit:
    """How the head is fitted: teacher-forced tokens (windows cut from documents), split into fit and calibration."""

    tokens: int = 65536
    window: int = 256
    width: int = 128
    epochs: int = 4
    batch_size: int = 512
    lr: float = 1e-3
    calibration: float = 0.25  # share of the windows held back to calibrate the threshold and report
    target_agreement: float = 0.95
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


class ExitHead(nn.Module):
    """One MLP per non-final loop: final-normed hidden (n, H) -> logit of "this loop agrees with the last"."""

    def __init__(self, hidden_size: int, loops: int, width: int = 128, threshold: float = 1.0):
        super().__init__()
        if loops < 2:
            raise UserError("an exit head needs a recursive model with at least 2 loops")
        self.hidden_size, self.loops, self.width, self.threshold = hidden_size, loops, width, threshold
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden_size, width), nn.GELU(), nn.Linear(width, 1)) for _ in range(loops - 1)
        )

    def forward(self, hidden: torch.Tensor, loop: int) -> torch.Tensor:
        """Logits (n,) for rows that all finished ``loop`` (1-based, < loops)."""
        return self.mlps[loop - 1](hidden.to(self.mlps[0][0].weight.dtype)).squeeze(-1)

    def scores(self, hidden: torch.Tensor, loops: list[int]) -> torch.Tensor:
        """Agreement probabilities of rows at different loops (each row's own loop's MLP)."""
        out = torch.empty(len(loops), device=hidden.device)
        index = torch.tensor(loops, device=hidden.device)
        for b in sorted(set(loops)):
            rows = (index == b).nonzero().squeeze(-1)
            out[rows] = torch.sigmoid(self(hidden[rows], b)).float()
        return out

    def save(self, directory: str | Path, report: dict | None = None) -> None:
        directory = Path(directory)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        atomic_write_bytes(directory / WEIGHTS, safetensors_bytes(tensors))  # the config, written last, commits it
        config = {
            "hidden_size": self.hidden_size,
            "loops": self.loops,
            "width": self.width,
            "threshold": self.threshold,
        }
        atomic_write_text(directory / CONFIG, json.dumps({**config, **(report or {})}, indent=1))

    @classmethod
    def load(cls, directory: str | Path) -> ExitHead | None:
        """The head saved in ``directory`` (a model dir), or None when it has none."""
        directory = Path(directory)
        if not (directory / CONFIG).is_file():
            return None
        config = json.loads((directory / CONFIG).read_text())
        head = cls(config["hidden_size"], config["loops"], config["width"], config["threshold"])
        head.load_state_dict(load_file(str(directory / WEIGHTS)))
        return head.eval()


def teacher_forced_features(
    model: nn.Module, windows: Iterable[torch.Tensor]
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per non-final loop b, the final-normed hidden states (N, H) of every position, and ``agrees`` (B-1, N):
    whether loop b's argmax equals the final loop's there."""
    recursive = RecursiveModel(model)
    features: list[list[torch.Tensor]] = [[] for _ in range(recursive.loops - 1)]
    agrees = []
    with torch.inference_mode():
        for ids in windows:
            hiddens = [h[0] for h in recursive.exit_hiddens(ids[None])]
            final = recursive.logits(hiddens[-1]).argmax(-1)
            agrees.append(torch.stack([recursive.logits(h).argmax(-1) == final for h in hiddens[:-1]]))
            for out, hidden in zip(features, hiddens[:-1]):
                out.append(hidden.float())
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


def outcome(scores: torch.Tensor, agrees: torch.Tensor, threshold: float) -> dict:
    """What exiting at the earliest loop scoring >= ``threshold`` gives on teacher-forced tokens: exit fractions per
    loop, mean exit loop and agreement with the final loop (``scores``, ``agrees``: (B-1, N))."""
    exits = earliest_at(scores, threshold)
    summary = exit_summary([exits], loops=scores.shape[0] + 1)
    del summary["tokens"]
    return {**summary, "agreement": agreement_of(agrees, exits)}


def calibrate(scores: torch.Tensor, agrees: torch.Tensor, target: float, candidates: int = 400) -> float:
    """The smallest threshold whose earliest-loop exits keep ``target`` agreement with the final loop (NEVER
    when none does). Thresholds tried: the scores themselves, evenly thinned to ``candidates`` values."""
    values = scores.flatten().unique()  # sorted
    if len(values) > candidates:
        values = values[torch.linspace(0, len(values) - 1, candidates).round().long()]
    for threshold in values.tolist():
        if agreement_of(agrees, earliest_at(scores, threshold)) >= target:
            return threshold
    return NEVER


def head_scores(head: ExitHead, features: list[torch.Tensor]) -> torch.Tensor:
    """Agreement probabilities (B-1, N) of teacher-forced features."""
    with torch.inference_mode():
        return torch.stack([torch.sigmoid(head(x, b)).float() for b, x in enumerate(features, start=1)])


def evaluate_exit_head(model: nn.Module, head: ExitHead, windows: list[torch.Tensor]) -> dict:
    """The head at its threshold on teacher-forced windows the fit never saw (e.g. held-out text), beside the
    oracle: tokens, AUC per loop, and the exits and agreement each gives."""
    features, agrees = teacher_forced_features(model, windows)
    scores = head_scores(head, features)
    return {
        "tokens": agrees.shape[1],
        "agree_rate": [float(a.float().mean()) for a in agrees],
        "auc": [auc(s, a) for s, a in zip(scores, agrees)],
        "learned": outcome(scores, agrees, head.threshold),
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

    Returns the head (threshold set) and a report: token counts and, on the calibration windows, per-loop
    agreement base rates and AUCs and what the calibrated threshold and the oracle give."""
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
    train_x, train_y = teacher_forced_features(model, [windows[i] for i in order[held:]])
    cal_x, cal_y = teacher_forced_features(model, [windows[i] for i in order[:held]])

    head = ExitHead(train_x[0].shape[-1], recursive.loops, fit.width)
    optimizer = torch.optim.AdamW(head.parameters(), lr=fit.lr, weight_decay=0.01)
    count = train_y.shape[1]
    with torch.enable_grad():
        for _ in range(fit.epochs):
            for batch in torch.randperm(count, generator=generator).split(fit.batch_size):
                loss = sum(
                    F.binary_cross_entropy_with_logits(head(train_x[b][batch], b + 1), train_y[b][batch].float())
                    for b in range(recursive.loops - 1)
                )
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    head.eval()
    scores = head_scores(head, cal_x)
    head.threshold = calibrate(scores, cal_y, fit.target_agreement)
    report = {
        "fit": asdict(fit),
        "fit_tokens": count,
        "calibration": {
            "tokens": cal_y.shape[1],
            "agree_rate": [float(a.float().mean()) for a in cal_y],
            "auc": [auc(s, a) for s, a in zip(scores, cal_y)],
            "learned": outcome(scores, cal_y, head.threshold),
            "oracle": outcome(cal_y.float(), cal_y, 1.0),
        },
    }
    return head, report
