"""`write_report`: one self-contained HTML page (plus PNGs) describing one run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from fedfm.errors import FedFMError
from fedfm.report import htmlkit as hk
from fedfm.report.metrics_io import RunData, load_run
from fedfm.report.sections import render_sections

REPORT_DIR = "report"
REPORT_FILE = "report.html"


def write_report(run_dir: Path, local_only_dir: Path | None = None) -> Path:
    """Write `RUN_DIR/report/report.html` and its PNGs, and return the HTML's path.

    The HTML inlines every image as a data URI and references nothing outside itself;
    the PNGs beside it are the same images, for slides and papers.

    Args:
        run_dir: a run directory holding `metrics.jsonl` (and usually `config.json`,
            optionally `summary.json`).
        local_only_dir: a local-only baseline run of the same split; its per-client
            accuracies give the share of clients the global model makes worse.

    Returns:
        The path of the written HTML file.

    Raises:
        FedFMError: the run directory has no metrics, or one of its files is malformed.
    """
    run = load_run(Path(run_dir))
    if local_only_dir is not None:
        local = last_client_accuracy(load_run(Path(local_only_dir)))
        run = replace(run, summary={**(run.summary or {}), "local_only": local})
    out_dir = run.path / REPORT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    html = hk.page(f"fedfm run report: {run.name}", render_sections(run, out_dir))
    path = out_dir / REPORT_FILE
    path.write_text(html, encoding="utf-8")
    return path


def last_client_accuracy(run: RunData) -> dict[str, float]:
    """Per-client accuracies of the last round that recorded them.

    Raises:
        FedFMError: the run recorded no per-client accuracy.
    """
    for record in reversed(run.records):
        acc = record.get("client_accuracy")
        if isinstance(acc, dict) and acc:
            return {str(k): float(v) for k, v in acc.items()}
    raise FedFMError(f"{run.path} has no per-client accuracy (client_accuracy) to compare with")
