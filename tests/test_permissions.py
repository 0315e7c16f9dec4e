"""Files rrt writes get the mode a plain ``open`` would give (0666 less the umask), so labmates can read them.

Atomic writes go through ``tempfile.mkstemp`` (0600) or a library's own tmp file; each must be re-moded before
the rename, following the umask rather than a fixed mode.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from rrt.data.packing import cached_rows
from rrt.records import RunRecord
from rrt.recursive import RecursionSpec
from rrt.recursive.convert import convert_to_recursive
from rrt.recursive.io import save_converted
from tests.helpers import doc
from tests.tiny import tiny_model

MODES = {0o022: 0o644, 0o027: 0o640}  # the usual umask, and a group-only one (a fixed 0644 would get it wrong)


@pytest.fixture(params=sorted(MODES), ids=lambda mask: f"umask{mask:03o}")
def umask(request) -> Iterator[int]:
    """Run the test under ``request.param`` as the process umask; yield the mode files should then have."""
    previous = os.umask(request.param)
    try:
        yield MODES[request.param]
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_record_is_readable_by_the_group(tmp_path, umask):
    record = RunRecord.create(tmp_path / "run")
    record.append("metrics", {"step": 1, "loss": 3.0})  # a rewrite keeps the mode too
    assert mode(record.path) == umask


def test_saved_model_files_are_readable_by_the_group(tmp_path, umask):
    model = convert_to_recursive(tiny_model("llama", num_layers=4), RecursionSpec(loops=2))
    directory = save_converted(model, tmp_path / "model")
    modes = {path.name: mode(path) for path in directory.iterdir()}
    assert modes == {"config.json": umask, "recursion.json": umask, "model.safetensors": umask}


def test_packed_rows_are_readable_by_the_group(cache, tokenizer_dir, umask):
    cached_rows(lambda: [doc(i, 7) for i in range(4)], "cd" * 32, tokenizer_dir, 8)
    (packed,) = (cache / "packed").rglob("*.npy")
    assert mode(packed) == umask
