"""analysis/results.ipynb executes headless (nbclient, the venv's kernel) on the records fixture and shows the
tables."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

from tests.test_analysis import records_root, synthetic_root  # noqa: F401  (fixtures)

NOTEBOOK = Path(__file__).parents[1] / "analysis" / "results.ipynb"


def test_notebook_runs_and_shows_every_table(records_root, monkeypatch):  # noqa: F811
    monkeypatch.setenv("RRT_RUNS", str(records_root))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), (
        "commit it without outputs"
    )
    NotebookClient(
        notebook, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(NOTEBOOK.parents[1])}}
    ).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "\n".join(
        str(o.get("text", ""))
        + str(o.get("data", {}).get("text/markdown", ""))
        + str(o.get("data", {}).get("text/plain", ""))
        for o in outputs
    )
    assert "skipped (corrupt or partial): 2" in text
    for title in ("Table 2", "Table D.1", "Table F.1", "Table G.2", "Table I.1", "Table J.1", "Table K.2"):
        assert f"## {title}" in text
    assert "| source " in text and "Stepwise is the best init for strict recursion" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 5  # one metric per figure


def test_notebook_opened_from_analysis_reads_the_runs_below_the_repo_root(monkeypatch):
    """Jupyter started in analysis/ runs the kernel there: a relative RRT_RUNS still names a path from the repo."""
    monkeypatch.setenv("RRT_RUNS", "docs/report/records")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    notebook.cells = notebook.cells[:2]  # the loading cell is what differs
    NotebookClient(
        notebook, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    ).execute()
    text = "".join(str(o.get("text", "")) for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs)
    runs = len(list((NOTEBOOK.parents[1] / "docs" / "report" / "records").rglob("record.json")))
    assert runs and text.startswith(f"{runs} runs from ")
