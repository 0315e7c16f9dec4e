"""Typed config groups: the schemas in rrt/conf/schema.py hold the keys, types and defaults once; a composed config
reads as plain strings; Hydra's composition errors are one line naming the key (tests/test_bad_input.py has the
entry-point cases)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import fields

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from rrt.conf.schema import SCHEMAS, Choice, Looping, LoRAConfig, compose_error_line, unknown_keys
from rrt.recursive import LoRASpec, RecursionSpec
from tests.helpers import CONF, ROOT, TINY, compose_config


def test_every_option_of_a_typed_group_names_its_schema():
    for group in SCHEMAS:
        for option in sorted((CONF / group).glob("*.yaml")):
            composed = compose_config("config", f"{group}={option.stem}")
            node = OmegaConf.to_container(composed[group] if group != "variant" else composed.variant)
            assert set(node) == {f.name for f in fields(SCHEMAS[group])}, option
            assert OmegaConf.get_type(composed, group) is SCHEMAS[group], option


def test_defaults_live_in_the_schema_once():
    assert "rank:" not in (CONF / "lora" / "default.yaml").read_text()  # the yaml names base_lora, repeats nothing
    lora = compose_config("config").lora
    assert LoRASpec(**OmegaConf.to_container(lora)) == LoRASpec()
    assert {f.name for f in fields(LoRAConfig)} <= {f.name for f in fields(LoRASpec)}
    spec = RecursionSpec()
    assert (spec.loops, spec.looping, spec.init, spec.norm_init) == (2, "cycle", "stepwise", "source")


def test_closed_set_values_read_as_plain_strings():
    cfg = compose_config("config", "init=average", "recursion.looping=sequence")
    looping = cfg.recursion.looping
    assert isinstance(looping, Choice) and looping == "sequence" and looping is Looping.sequence
    assert (str(looping), f"{looping}", repr(looping), json.dumps(looping)) == (
        "sequence",
        "sequence",
        "'sequence'",
        '"sequence"',
    )
    assert cfg.run_name == "recursive-average-B2-r0"  # string interpolation of typed values
    assert {"sequence": 1}[looping] == 1 and hash(looping) == hash("sequence")
    assert "Looping" not in OmegaConf.to_yaml(cfg) and "Looping" not in json.dumps(OmegaConf.to_container(cfg))


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("lora.rank=abc", "lora.rank"),
        ("recursion.loops=two", "recursion.loops"),
        ("recursion.looping=spiral", "recursion.looping"),
        ("lora.svd=approx", "lora.svd"),
        ("distill.weight=heavy", "distill.weight"),
        ("early_exit.self_kd=maybe", "early_exit.self_kd"),
        ("budget.tokens=1e3", "budget.tokens"),
        ("lora.rnak=8", "lora.rnak"),
        ("lora.ranks.z=8", "lora.ranks.z"),
    ],
)
def test_a_wrong_type_value_or_key_fails_to_compose_with_one_line_naming_it(override, key):
    with pytest.raises(ConfigCompositionException) as error:
        compose_config("config", override)
    line = compose_error_line(error.value)
    assert "\n" not in line and key in line, line
    assert "use +" not in line or key.startswith("lora.ranks")  # a schema's unknown key: no "append with +" advice


def test_a_key_added_with_plus_is_found_before_anything_runs():
    assert unknown_keys(compose_config("config", "+lora.rnak=8", "+distill.extra=1")) == ["lora.rnak", "distill.extra"]
    assert unknown_keys(compose_config("config")) == []


def test_a_sweep_with_a_job_that_does_not_compose_stops_before_any_job_runs(tmp_path):
    """Hydra's sweeper composes every job before launching: one line naming the override, exit 2, nothing trained
    (a job that composes but fails the preflight is skipped alone: tests/test_faults.py)."""
    command = [sys.executable, str(ROOT / "train.py"), "-m", *TINY, "budget.tokens=512", "lora.rank=0,abc"]
    result = subprocess.run(
        [*command, f"paths.runs_root={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines() == [
        "error: Error merging override lora.rank=abc: Value 'abc' of type 'str' could not be converted to Integer"
    ]
    assert not list(tmp_path.rglob("record.json"))
