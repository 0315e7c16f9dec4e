"""The learned exit head: fitted on teacher-forced agreement labels, calibrated, saved beside the model, and served
live by the engine (rrt/serving/exit_head.py, policies.LearnedExit)."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from rrt.serving import Engine, ExitHead, ExitHeadFit, FullDepth, LearnedExit, exit_trajectories, fit_exit_head
from rrt.serving.exit_head import (
    NEVER,
    auc,
    calibrate,
    calibrate_per_loop,
    evaluate_exit_head,
    outcome,
    teacher_forced_features,
)
from rrt.serving.trajectories import earliest_at, learned_exits, window_trajectories
from tests.test_serving import _Tokenizer, agreeing_loops_model, documents, make_requests, model_for, reference

SMALL = ExitHeadFit(tokens=120, window=20, width=8, epochs=20, batch_size=32, lr=1e-2, calibration=0.3)


def test_calibration_picks_the_smallest_threshold_that_keeps_the_target():
    """Two loops (B=3), four tokens, hand-computed: exit at the earliest loop scoring >= t."""
    scores = torch.tensor([[0.9, 0.8, 0.3, 0.1], [0.95, 0.2, 0.6, 0.1]])
    agrees = torch.tensor([[True, False, True, False], [True, True, False, False]])
    # t=0.6: token 0 exits at 1 (agrees), 1 at 1 (wrong), 2 at 2 (wrong), 3 runs all loops -> 2/4
    assert outcome(scores, agrees, 0.6)["agreement"] == 0.5
    # t=0.9: token 0 exits at 1, the others run all loops -> 4/4; t=0.8 lets token 1 exit wrongly -> 3/4
    assert outcome(scores, agrees, 0.8)["agreement"] == 0.75
    assert calibrate(scores, agrees, target=1.0) == pytest.approx(0.9, abs=1e-6)
    assert outcome(scores, agrees, 0.9) == {
        "exit_frac_loop1": 0.25,
        "exit_frac_loop2": 0.0,
        "exit_frac_loop3": 0.75,
        "mean_exit_loop": 2.5,
        "agreement": 1.0,
    }
    assert calibrate(scores, torch.zeros_like(agrees), target=1.0) == NEVER  # every early exit is wrong
    assert torch.equal(earliest_at(scores, 0.55), torch.tensor([1, 1, 2, 3]))


def test_per_loop_thresholds_exit_earlier_than_a_shared_one_at_the_same_agreement():
    """Three tokens, B=3, hand-computed. Loop 2's scores run lower than loop 1's: token B is wrong at loop 1 and
    right at loop 2, token C wrong at both. A shared threshold must stay above B's loop-1 score (0.4) and so above
    its loop-2 score (0.3) too: B runs all loops (mean 7/3); per loop, B exits at loop 2 (mean 2)."""
    scores = torch.tensor([[0.9, 0.4, 0.2], [0.5, 0.3, 0.1]])
    agrees = torch.tensor([[True, False, False], [True, True, False]])
    assert calibrate(scores, agrees, target=1.0) == pytest.approx(0.5)
    assert outcome(scores, agrees, 0.5)["mean_exit_loop"] == pytest.approx(7 / 3)
    thresholds = calibrate_per_loop(scores, agrees, target=1.0)
    assert thresholds == pytest.approx([0.5, 0.3])
    assert outcome(scores, agrees, thresholds) == {
        "exit_frac_loop1": 1 / 3,
        "exit_frac_loop2": 1 / 3,
        "exit_frac_loop3": 1 / 3,
        "mean_exit_loop": 2.0,
        "agreement": 1.0,
    }
    assert torch.equal(earliest_at(scores, [NEVER, 0.3]), torch.tensor([2, 2, 3]))
    with pytest.raises(ValueError, match="3 exit thresholds for 2 non-final loop"):
        earliest_at(scores, [0.1, 0.2, 0.3])


def test_the_engine_applies_each_loops_threshold_to_the_rows_at_that_loop():
    model = model_for("llama", loops=3, rank=8)
    head, _ = fit_exit_head(model, _Tokenizer(), documents(8), SMALL)
    requests = make_requests()
    for thresholds, exit_loop in (([NEVER, 0.0], 2), ([0.0, NEVER], 1), ([NEVER, NEVER], 3)):
        head.thresholds = thresholds
        _, stats = Engine(model, LearnedExit(head), max_batch=2).generate(requests)
        assert set(stats.exit_loops) == {exit_loop}, thresholds
    assert LearnedExit(head, threshold=0.5).thresholds == [0.5, 0.5]


def test_auc_is_the_probability_a_positive_outranks_a_negative():
    assert auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([False, False, True, True])) == 0.75
    assert math.isnan(auc(torch.tensor([0.2, 0.9]), torch.tensor([True, True])))  # one class: undefined


def test_fit_on_loops_that_always_agree_exits_every_token_at_loop_one():
    model = agreeing_loops_model()
    head, report = fit_exit_head(model, _Tokenizer(), documents(8), SMALL)
    assert report["calibration"]["agree_rate"] == [1.0]
    assert (report["fit_tokens"], report["calibration"]["tokens"]) == (80, 40)  # 6 windows of 20, 2 held back
    assert report["calibration"]["learned"]["exit_frac_loop1"] == 1.0
    requests = make_requests()
    outputs, stats = Engine(model, LearnedExit(head), max_batch=2).generate(requests)
    assert outputs == reference(model, requests)  # copied exit states are the true states here
    assert set(stats.exit_loops) == {1}


def test_a_fitted_head_separates_agreeing_tokens_and_the_engine_exits_live():
    model = model_for("gemma3", loops=2, rank=8)
    head, report = fit_exit_head(model, _Tokenizer(), documents(8), SMALL)
    assert 0 < report["calibration"]["agree_rate"][0] < 1  # both classes occur: the head has something to learn
    requests = make_requests()
    never = Engine(model, LearnedExit(head, threshold=NEVER), max_batch=2).generate(requests)
    always = Engine(model, LearnedExit(head, threshold=0.0), max_batch=2).generate(requests)
    full_outputs, full = Engine(model, FullDepth(), max_batch=2).generate(requests)
    assert never[0] == full_outputs
    assert never[1].head_calls == full.head_calls  # deciding costs no LM-head call (a confidence policy's does)
    assert set(never[1].exit_loops) == {2} and set(always[1].exit_loops) == {1}


def test_teacher_forced_learned_exits_are_the_heads_scores_at_its_threshold():
    model = model_for("llama", loops=3, rank=8)
    head, _ = fit_exit_head(model, _Tokenizer(), documents(8), SMALL)
    docs = documents(2)
    trajectories = exit_trajectories(model, _Tokenizer(), docs, exit_head=head)
    windows = [_Tokenizer()(d, return_tensors="pt").input_ids[0] for d in docs]
    features, agrees = teacher_forced_features(model, windows, head.inputs)
    with torch.inference_mode():
        scores = torch.stack([torch.sigmoid(head(x, b)) for b, x in enumerate(features, start=1)])
    torch.testing.assert_close(torch.cat([t.exit_score for t in trajectories], dim=1), scores)
    assert torch.equal(torch.cat([t.agrees for t in trajectories], dim=1), agrees)
    exits = torch.cat([learned_exits(t, head.thresholds) for t in trajectories])
    assert torch.equal(exits, earliest_at(scores, head.thresholds))
    report = evaluate_exit_head(model, head, windows)
    assert report["tokens"] == 40 and report["learned"] == outcome(scores, agrees, head.thresholds)
    assert report["oracle"]["agreement"] == 1.0


class _RecordedScores(LearnedExit):
    """Never exits; keeps the head's score of every decision the engine asks for, by (request, token index)."""

    def __init__(self, head: ExitHead):
        super().__init__(head)
        self.seen: dict[tuple[int, int, int], float] = {}

    def exits(self, loops, logits, requests, steps, hidden=None, previous=None):
        for row, score in enumerate(self.head.scores(hidden, list(loops), previous).tolist()):
            self.seen[requests[row], steps[row], loops[row]] = score
        return [False] * len(requests)


def test_the_engine_scores_each_loop_on_its_own_output_and_input_as_teacher_forcing_does():
    """Live scores (rows at mixed loops in one step; loop 1's input is the token's embedding, loop 2's the loop-1
    output) equal the teacher-forced scores over the text the engine generated, at every token and loop."""
    model = model_for("llama", loops=3, rank=8)
    head, _ = fit_exit_head(model, _Tokenizer(), documents(8), replace(SMALL, inputs="hidden+change"))
    policy, requests = _RecordedScores(head), make_requests()
    outputs, _ = Engine(model, policy, max_batch=2).generate(requests)
    windows = [torch.tensor(r.prompt + outputs[r.rid]) for r in requests]
    trajectories = window_trajectories(model, windows, exit_head=head)
    expected = {
        (r.rid, k, b): float(t.exit_score[b - 1, len(r.prompt) - 1 + k])
        for r, t in zip(requests, trajectories)
        for k in range(1, r.max_new_tokens)
        for b in (1, 2)
    }
    assert policy.seen.keys() == expected.keys()
    for key, score in expected.items():
        assert policy.seen[key] == pytest.approx(score, abs=1e-4), key


def test_saved_head_reloads_with_its_threshold_and_scores(tmp_path):
    model = model_for("llama", loops=2, rank=8)
    head, report = fit_exit_head(model, _Tokenizer(), documents(8), replace(SMALL, inputs="hidden+change"))
    head.save(tmp_path, report)
    loaded = ExitHead.load(tmp_path)
    hidden, previous = torch.randn(2, 5, head.hidden_size)
    assert (loaded.thresholds, loaded.inputs) == (head.thresholds, "hidden+change")
    torch.testing.assert_close(loaded.scores(hidden, [1] * 5, previous), head.scores(hidden, [1] * 5, previous))
    assert ExitHead.load(tmp_path / "elsewhere") is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exit_head.json", "exit_head.safetensors"]
    # a head saved before per-loop thresholds (and before inputs): one threshold, the hidden state only
    config = json.loads((tmp_path / "exit_head.json").read_text())
    old = {k: v for k, v in config.items() if k not in ("thresholds", "inputs")}
    ExitHead(head.hidden_size, 3, head.width, inputs="hidden").save(tmp_path)
    (tmp_path / "exit_head.json").write_text(json.dumps({**old, "loops": 3, "threshold": 0.7}))
    assert (ExitHead.load(tmp_path).thresholds, ExitHead.load(tmp_path).inputs) == ([0.7, 0.7], "hidden")


@pytest.mark.parametrize(
    ("fit", "message"),
    [
        (ExitHeadFit(tokens=0), "exit_head.tokens"),
        (ExitHeadFit(calibration=1.0), "exit_head.calibration"),
        (ExitHeadFit(target_agreement=0.0), "exit_head.target_agreement"),
        (ExitHeadFit(thresholds="both"), "exit_head.thresholds"),
    ],
)
def test_bad_fit_settings_fail_before_any_compute(fit, message):
    with pytest.raises(ValueError, match=message):
        fit_exit_head(model_for("llama", loops=2), _Tokenizer(), documents(), fit)


def test_a_model_that_loops_once_has_no_exit_head():
    with pytest.raises(ValueError, match="at least 2 loops"):
        fit_exit_head(model_for("llama"), _Tokenizer(), documents(), SMALL)


def test_the_command_fits_saves_and_records_the_head_and_serve_uses_it(saved_run_dir, monkeypatch, capsys):
    """rrt-exit-head on a run dir (tiny converted model, the real corpus), then serve.policy=learned on it."""
    from hydra.core.global_hydra import GlobalHydra

    from rrt.cli import exit_head as exit_head_cli
    from rrt.cli.evaluate import load_target
    from rrt.records import RunRecord
    from rrt.serving.runner import serve
    from tests.helpers import compose_config

    argv = [f"run={saved_run_dir}", "exit_head.tokens=256", "exit_head.window=32", "heldout_tokens=64", "threads=1"]
    GlobalHydra.instance().clear()
    monkeypatch.setattr("sys.argv", ["rrt-exit-head", *argv, f"hydra.run.dir={saved_run_dir}/hydra"])
    exit_head_cli.main()
    head = ExitHead.load(saved_run_dir / "model")
    section = RunRecord.load(saved_run_dir).data["exit_head"]
    assert section["thresholds"] == head.thresholds
    assert section["fit_tokens"] + section["calibration"]["tokens"] == 256
    assert section["heldout"]["tokens"] == 64
    cfg = compose_config("serve", f"run={saved_run_dir}", "serve.policy=learned", "serve.requests=2")
    cfg.serve.update(max_batch=2, prompt_tokens=8, min_new_tokens=3, max_new_tokens=4)
    model, tokenizer, record = load_target(cfg)
    row = serve(cfg.serve, model, tokenizer, record, head)
    assert row["exit_policy"] == f"learned>={head.thresholds[0]:.3g}" and row["tokens"] == 8
    with pytest.raises(ValueError, match="needs an exit head"):
        serve(cfg.serve, model, tokenizer, record, None)


def test_hidden_features_are_the_first_half_of_hidden_plus_change(model):
    from benchmarks.exit_head_variants import features_of

    windows = [torch.arange(3, 40), torch.arange(50, 70)]
    hidden = teacher_forced_features(model, windows, "hidden")
    narrowed = features_of("hidden", teacher_forced_features(model, windows, "hidden+change"), model.config.hidden_size)
    assert len(hidden[0]) == len(narrowed[0]) == 1 and torch.equal(hidden[1], narrowed[1])
    assert torch.equal(hidden[0][0], narrowed[0][0])


def test_the_inputs_benchmark_fits_every_variant_and_judges_it_on_heldout_text(saved_run_dir, tmp_path, monkeypatch):
    import json

    from benchmarks import common, exit_head_variants
    from rrt.records import RunRecord

    RunRecord.load(saved_run_dir).update(setting={"model": "tiny", "init": "stepwise", "loops": 2, "token_budget": 8})
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    exit_head_variants.main(f"--run {saved_run_dir} --tokens 256 --window 32 --heldout-tokens 64 --threads 1".split())
    result = json.loads((tmp_path / "results" / "exit_head_variants.json").read_text())
    expected = [(*variant, mode) for variant in exit_head_variants.VARIANTS for mode in ("per_loop", "shared")]
    assert [(r["inputs"], r["width"], r["epochs"], r["thresholds"]) for r in result["rows"]] == expected
    assert result["model"] == "tiny_stepwise_b2_post8" and result["heldout_tokens"] == 64
    assert result["fit_tokens"] + result["calibration_tokens"] == 256
    assert all(len(r["heldout_auc"]) == 1 and 1 <= r["heldout_mean_exit_loop"] <= 2 for r in result["rows"])


def test_the_best_variant_exits_earliest_among_those_keeping_the_target():
    from benchmarks.exit_head_variants import best

    rows = [
        {"heldout_agreement": 0.96, "heldout_mean_exit_loop": 1.5},
        {"heldout_agreement": 0.97, "heldout_mean_exit_loop": 1.4},
        {"heldout_agreement": 0.94, "heldout_mean_exit_loop": 1.1},  # earliest, but below the target
    ]
    assert best(rows, 0.95) is rows[1]
    assert best(rows, 0.99) is rows[1]  # none keeps it: the closest
