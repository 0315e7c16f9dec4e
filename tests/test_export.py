"""HF-safe saves and the export: stock loaders refuse an rrt dir; rrt-export's plain and PEFT checkpoints give the rrt
model's logits; lm-eval's CLI scores the export as rrt-lm-eval scores the rrt model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lm_eval.models.huggingface import HFLM
from peft import PeftModel
from transformers import AutoModelForCausalLM

import rrt
from rrt.cli import export as export_cli
from rrt.cli.lm_eval_cli import requested_tasks, with_local_tasks
from rrt.evaluation.tasks import task_dir
from rrt.recursive import LoRASpec, RecursionSpec, convert_to_recursive
from rrt.recursive.io import HF_REFUSAL
from tests.tiny import tiny_config, tiny_model, tokens

BIN = Path(sys.executable).parent
RELAXATIONS = {
    "lora": LoRASpec(rank=4),
    "lamda": LoRASpec(rank=3, adapter="lamda"),
    "mixed ranks": LoRASpec(rank=4, ranks={"q": 2, "kv": None, "o": 0, "ffn": None}),  # rank_pattern, o unadapted
}


def relaxed(family: str, lora: LoRASpec) -> torch.nn.Module:
    """Average init: every depth's residual is non-zero, so every adapter (SVD init) changes the output."""
    return convert_to_recursive(tiny_model(family), RecursionSpec(loops=2, init="average", lora=lora))


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens()).logits


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tokenizer):
    """A relaxed tiny Gemma 3 with the real vocabulary, saved with its tokenizer (what a run leaves in model/)."""
    torch.manual_seed(0)
    config = tiny_config("gemma3")
    config.vocab_size = len(tokenizer)
    model = AutoModelForCausalLM.from_config(config).eval()
    model = convert_to_recursive(model, RecursionSpec(loops=2, init="average", lora=LoRASpec(rank=4)))
    return rrt.save_pretrained(model, tmp_path_factory.mktemp("rrt") / "model", tokenizer=tokenizer)


def test_stock_from_pretrained_refuses_an_rrt_dir_and_rrt_loads_it(tmp_path):
    model = relaxed("gemma3", RELAXATIONS["lora"])
    rrt.save_pretrained(model, tmp_path)
    with pytest.raises(ValueError, match=r"rrt Recursive Transformer.*rrt\.from_pretrained\(<dir>\).*rrt-export"):
        AutoModelForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(logits(rrt.from_pretrained(tmp_path)), logits(model))


def test_stock_lm_eval_hf_refuses_an_rrt_dir(saved):
    with pytest.raises(ValueError, match="rrt-lm-eval --model rrt"):
        HFLM(pretrained=str(saved), device="cpu")


def test_dirs_saved_before_the_refusal_still_load(tmp_path):
    model = relaxed("llama", RELAXATIONS["lora"])
    rrt.save_pretrained(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config.pop("transformers_weights") == HF_REFUSAL
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert torch.equal(logits(rrt.from_pretrained(tmp_path)), logits(model))


def test_a_saved_plain_model_stays_a_stock_checkpoint(tmp_path):
    """variant=full saves an unconverted model: stock loaders read it right, so it is not refused."""
    model = tiny_model("llama")
    rrt.save_pretrained(model, tmp_path)
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(tmp_path)), logits(model))


@pytest.mark.parametrize("family", ["gemma3", "gpt_neox"])  # tied norms + q/k norms; a fused QKV linear
@pytest.mark.parametrize("relaxation", list(RELAXATIONS))
def test_export_is_a_plain_checkpoint_and_a_peft_pair_with_the_same_logits(tmp_path, family, relaxation):
    model = relaxed(family, RELAXATIONS[relaxation])
    rrt.save_pretrained(model, tmp_path / "rrt")
    export_cli.main([str(tmp_path / "rrt"), str(tmp_path / "out")])
    expected = logits(model)

    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert not [key for key in config if key.startswith("rrt_") or key == "transformers_weights"]
    assert len(plain.model.layers if family == "gemma3" else plain.gpt_neox.layers) == 6
    assert (logits(plain) - expected).abs().max() <= 1e-4

    base = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "peft" / "base")
    assert (logits(base) - expected).abs().max() > 1e-3  # W' alone is another model: the relaxation is in the adapters
    adapter = json.loads((tmp_path / "out" / "peft" / "adapter" / "adapter_config.json").read_text())
    assert adapter["lora_alpha"] == adapter["r"] and adapter["alpha_pattern"] == adapter["rank_pattern"]
    peft = PeftModel.from_pretrained(base, tmp_path / "out" / "peft" / "adapter")
    assert (logits(peft) - expected).abs().max() <= 1e-4


def test_strict_recursive_export_has_no_peft_pair(tmp_path):
    model = convert_to_recursive(tiny_model("gemma3"), RecursionSpec(loops=3))
    rrt.save_pretrained(model, tmp_path / "rrt")
    export_cli.main([str(tmp_path / "rrt"), str(tmp_path / "out")])
    assert not (tmp_path / "out" / "peft").exists()
    assert (logits(AutoModelForCausalLM.from_pretrained(tmp_path / "out")) - logits(model)).abs().max() <= 1e-4


@pytest.mark.parametrize(
    "args,message",
    [
        (["{tmp}/nowhere", "{tmp}/out"], "no saved rrt model here"),
        (["{saved}", "{saved}"], "is not empty: export into a new dir"),
    ],
)
def test_export_refuses_bad_paths_in_one_line(tmp_path, saved, capsys, args, message):
    with pytest.raises(SystemExit) as stop:
        export_cli.main([a.format(tmp=tmp_path, saved=saved) for a in args])
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_rrt_lm_eval_adds_the_local_task_mirrors_only_where_needed():
    assert requested_tasks(["--tasks", "piqa,arc_easy", "mmlu", "--limit", "2"]) == ["piqa", "arc_easy", "mmlu"]
    assert with_local_tasks(["-t", "piqa", "mmlu"]) == ["-t", "piqa", "mmlu", "--include_path", str(task_dir(["piqa"]))]
    assert with_local_tasks(["--tasks", "piqa", "--include_path", "mine"]) == [
        "--tasks",
        "piqa",
        "--include_path",
        "mine",
    ]
    assert with_local_tasks(["--tasks", "mmlu"]) == ["--tasks", "mmlu"]


def lm_eval_samples(command: list[str], out: Path) -> tuple[dict, list[list[float]]]:
    """Run an lm-eval CLI on 3 piqa docs; its piqa scores and each doc's log-likelihoods."""
    args = ["--tasks", "piqa", "--limit", "3", "--output_path", str(out), "--log_samples"]
    result = subprocess.run([*command, *args], check=False, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (results,) = out.rglob("results_*.json")
    (samples,) = out.rglob("samples_piqa_*.jsonl")
    docs = [json.loads(line) for line in samples.read_text().splitlines()]
    scores = json.loads(results.read_text())["results"]["piqa"]
    return scores, [
        [float(value) for value, _ in doc["filtered_resps"]] for doc in sorted(docs, key=lambda d: d["doc_id"])
    ]


def test_lm_eval_hf_scores_the_export_as_rrt_lm_eval_scores_the_rrt_model(tmp_path, saved):
    export_cli.main([str(saved), str(tmp_path / "export"), "--no-peft"])
    ours, our_docs = lm_eval_samples(
        [str(BIN / "rrt-lm-eval"), "--model", "rrt", "--model_args", f"pretrained={saved}"], tmp_path / "rrt"
    )
    stock, stock_docs = lm_eval_samples(
        [
            str(BIN / "lm_eval"),
            "--model",
            "hf",
            "--model_args",
            f"pretrained={tmp_path / 'export'}",
            "--include_path",
            str(task_dir(["piqa"])),
        ],
        tmp_path / "hf",
    )
    assert (ours["acc,none"], ours["acc_norm,none"]) == (stock["acc,none"], stock["acc_norm,none"])
    assert len(our_docs) == 3
    assert our_docs == [pytest.approx(doc, abs=1e-4) for doc in stock_docs]
