"""lm-eval model ``rrt``: an in-memory (recursive) causal LM, evaluated at a chosen exit loop.

Tokenisation and windowing follow ``HFLM`` exactly (same request -> same tokens), so scores match it;
only the scoring differs (``rrt.evaluation.scoring``: sorted batches, head only where needed).
"""

from __future__ import annotations

from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import resolve_max_length
from torch import nn

from rrt.evaluation.scoring import MAX_POSITIONS, score
from rrt.recursive.model import RecursiveModel


def default_add_bos(model: nn.Module, tokenizer) -> bool | None:
    """None = the tokenizer's own default (as HFLM); True where a Gemma tokenizer would omit BOS.

    Gemma scores collapse without BOS at the start of every scored input.
    """
    bos = tokenizer.bos_token_id
    if model.config.model_type.startswith("gemma") and bos is not None and tokenizer.encode("a")[:1] != [bos]:
        return True
    return None


@register_model("rrt")
class RecursiveLM(TemplateLM):
    """Scores log-likelihoods with ``model`` truncated to its first ``exit_loop`` loops (None: all)."""

    def __init__(
        self,
        pretrained: nn.Module | str,
        tokenizer=None,
        exit_loop: int | None = None,
        batch_size: int | str = 16,
        max_length: int | None = None,
        add_bos_token: bool | None = None,
        max_positions: int = MAX_POSITIONS,
        progress: bool = True,
        **_unused,
    ):
        super().__init__()
        if isinstance(pretrained, str):  # `lm_eval --model rrt --model_args pretrained=<saved dir>`
            from transformers import AutoTokenizer

            from rrt.recursive.io import load_converted

            tokenizer = tokenizer or AutoTokenizer.from_pretrained(pretrained)
            pretrained = load_converted(pretrained)
        if tokenizer is None:
            raise ValueError("RecursiveLM needs the tokenizer of the model")
        if exit_loop is not None:
            RecursiveModel(pretrained).exit_depth(
                int(exit_loop)
            )  # fail now, with the model's loop count, not mid-evaluation
        self.model = pretrained.eval()
        self.tokenizer = tokenizer
        self.exit_loop = None if exit_loop is None else int(exit_loop)
        self.batch_size = int(batch_size) if str(batch_size) != "auto" else 16
        self.max_length = max_length or resolve_max_length(pretrained.config, tokenizer)
        self.add_bos_token = add_bos_token if add_bos_token is not None else default_add_bos(pretrained, tokenizer)
        self.max_positions = int(max_positions)
        self.progress = progress

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        if add_special_tokens is None:
            add_special_tokens = self.add_bos_token
            if self.tokenizer.bos_token and string.startswith(self.tokenizer.bos_token):
                add_special_tokens = False
        kwargs = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        return self.tokenizer.encode(string, **kwargs)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        pairs = [(context, continuation) for _, context, continuation in requests]
        return score(
            self.model,
            pairs,
            batch_size=self.batch_size,
            max_length=self.max_length,
            exit_loop=self.exit_loop,
            max_positions=self.max_positions,
            progress=self.progress and not disable_tqdm,
            desc=f"loglikelihood (exit loop {self.exit_loop or 'all'})",
        )

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Whole-document log-likelihood in disjoint max_length windows (HFLM's windowing)."""
        windows, owners = [], []
        for index, (text,) in enumerate(request.args for request in requests):
            for window in lm_utils.get_rolling_token_windows(
                token_list=self.tok_encode(text),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length,
                context_len=1,
            ):
                windows.append((None, *lm_utils.make_disjoint_window(window)))
                owners.append(index)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, self._loglikelihood_tokens(windows, disable_tqdm)):
            totals[owner] += logprob
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        raise NotImplementedError(
            "the 'rrt' lm-eval model scores log-likelihoods only (the paper's 7 tasks and perplexity); "
            "for generation tasks use lm-eval's HFLM (model=hf) on the saved model"
        )
