"""`rrt-convert` prints the source mapping, N-emb before/after and the time, and saves a reloadable model."""

import subprocess
import sys

import torch

from rrt.recursive.io import load_converted
from tests.helpers import ROOT


def test_convert_cli_summary_and_saved_model(tmp_path):
    out = tmp_path / "converted"
    result = subprocess.run(
        [sys.executable, "-m", "rrt.cli.convert", "model=tiny_gemma3", "init=average", "lora.rank=4", f"out={out}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    text = result.stdout
    assert "6 layers -> 3 shared x 2 loops" in text
    assert "shared layer  1 from layer(s) [1, 4]" in text and "runs at depths [1, 4]" in text
    assert "N-emb:" in text and "converted in" in text
    model = load_converted(out)
    assert model.config.rrt_recursion["lora"]["rank"] == 4
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[2, 5, 7]])).logits).all()


def test_convert_cli_rejects_bad_loops(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "rrt.cli.convert", "model=tiny_gemma3", "recursion.loops=4"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "valid values: [1, 2, 3, 6]" in result.stderr
