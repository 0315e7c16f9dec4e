"""Analysis: run records -> the paper's tables and figures, side by side with the paper's own numbers."""

from analysis.load import Runs, load_runs
from analysis.paper import paper_table
from analysis.tables import BUILDERS, PaperTable, build_all

__all__ = ["BUILDERS", "PaperTable", "Runs", "build_all", "load_runs", "paper_table"]
