"""`write_report`: one self-contained HTML page (plus PNGs) describing one run."""

from __future__ import annotations

from pathlib import Path

from fedfm.report import htmlkit as hk
from fedfm.report.metrics_io import load_run
from fedfm.report.sections import render_sections

REPORT_DIR = "report"
REPORT_FILE = "report.html"


def write_report(run_dir: Path) -> Path:
    """Write `RUN_DIR/report/report.html` and its PNGs, and return the HTML's path.

    The HTML inlines every image as a data URI and references nothing outside itself;
    the PNGs beside it are the same images, for slides and papers.

    Args:
        run_dir: a run directory holding `metrics.jsonl` (and usually `config.json`,
            optionally `summary.json`).

    Returns:
        The path of the written HTML file.

    Raises:
        FedFMError: the run directory has no metrics, or one of its files is malformed.
    """
    run = load_run(Path(run_dir))
    out_dir = run.path / REPORT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    html = hk.page(f"fedfm run report: {run.name}", render_sections(run, out_dir))
    path = out_dir / REPORT_FILE
    path.write_text(html, encoding="utf-8")
    return path
