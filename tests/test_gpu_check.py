"""benchmarks/gpu_check.py works before a GPU ever sees it: its reduced CPU mode runs every section."""

from __future__ import annotations

import json
import os
import subprocess

from tests.helpers import ROOT


def test_gpu_check_reduced_mode_runs_every_section(tmp_path):
    out = tmp_path / "gpu_check.json"
    subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--reduced", "--out", str(out)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    result = json.loads(out.read_text())
    sections = result["sections"]
    assert result["mode"] == "reduced" and list(sections) == ["train", "loss", "fsdp", "serving", "eval"]
    assert all(s["status"] == "ok" for s in sections.values()), {k: s.get("error") for k, s in sections.items()}
    train = {row["variant"]: row for row in sections["train"]["rows"]}
    assert set(train) == {
        "vanilla",
        "recursive",
        "relaxed r=8",
        "vanilla +compile",
        "recursive +compile",
        "relaxed r=8 +compile",
    }
    assert all(row["tokens_per_s"] > 0 and row["loss"] > 0 for row in train.values())
    losses = {row["loss"]: row for row in sections["loss"]["rows"]}
    assert losses["chunked (rrt)"]["abs_diff_vs_naive"] < 1e-4 and "fused (liger)" in losses
    assert sections["fsdp"]["checkpoint_round_trip"] and sections["fsdp"]["shared_leaf_units"] > 0
    engines = {(row["batch"], row["engine"]) for row in sections["serving"]["rows"]}
    assert engines == {(b, e) for b in (2, 4) for e in ("vanilla static", "CSB", "CDB")}
    assert sections["eval"]["greedy_equal"] and sections["eval"]["max_abs_diff"] < 1e-4
