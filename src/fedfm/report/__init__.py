"""Run reports: HTML pages with plots from a run directory, comparisons, TensorBoard logging.

- `write_report(run_dir)`: `RUN_DIR/report/report.html` (+ PNGs) for one run.
- `write_compare(run_dirs, out)`: one page overlaying several runs.
- `fairness_stats(acc, ...)`: mean, weighted mean, worst 10%, spread over clients.
- `TensorBoardCallback(log_dir)`: per-round scalars to TensorBoard (extra `fedfm[tensorboard]`).

Sections of a report live in `sections.py`, one function each, in a registry. The names here
are imported lazily, so reading a headline or logging to TensorBoard never loads matplotlib.
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "write_compare": "fedfm.report.compare",
    "fairness_stats": "fedfm.report.fairness",
    "write_report": "fedfm.report.report",
    "TensorBoardCallback": "fedfm.report.tensorboard",
}
__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module 'fedfm.report' has no attribute {name!r}")
    return getattr(importlib.import_module(_NAMES[name]), name)
