"""Run reports: HTML pages with plots from a run directory, comparisons, TensorBoard logging.

- `write_report(run_dir)`: `RUN_DIR/report/report.html` (+ PNGs) for one run.
- `write_compare(run_dirs, out)`: one page overlaying several runs.
- `fairness_stats(acc, ...)`: mean, weighted mean, worst 10%, spread over clients.
- `TensorBoardCallback(log_dir)`: per-round scalars to TensorBoard (extra `fedfm[tensorboard]`).

Sections of a report live in `sections.py`, one function each, in a registry.
"""

from fedfm.report.compare import write_compare
from fedfm.report.fairness import fairness_stats
from fedfm.report.report import write_report
from fedfm.report.tensorboard import TensorBoardCallback

__all__ = ["TensorBoardCallback", "fairness_stats", "write_compare", "write_report"]
