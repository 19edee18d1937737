"""`write_compare`: overlay the curves of several runs in one self-contained HTML page."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from fedfm.errors import FedFMError
from fedfm.report import htmlkit as hk
from fedfm.report.headline import headline
from fedfm.report.metrics_io import RunData, has_numbers, load_run, series
from fedfm.report.plots import Curve, Panel, curves_figure, save_png
from fedfm.report.sections import byte_scale

# (key, panel title, cumulative?) of each overlaid figure; one PNG each.
COMPARED = (
    ("accuracy", "Test accuracy", False),
    ("loss", "Test loss", False),
    ("bytes_up", "Cumulative bytes up", True),
    ("bytes_down", "Cumulative bytes down", True),
)


def run_labels(runs: Sequence[RunData]) -> list[str]:
    """Legend labels: the run directory names, or full paths when two names clash."""
    names = [run.name for run in runs]
    if len(set(names)) == len(names):
        return names
    return [str(run.path) for run in runs]


def _overlay(
    runs: Sequence[RunData], labels: Sequence[str], key: str, title: str, cumulative: bool
) -> Figure | None:
    """One figure overlaying `key` (or its running sum) of every run that recorded it."""
    curves = []
    for run, label in zip(runs, labels, strict=True):
        if has_numbers(run.records, key):
            rounds, values = series(run.records, key)
            curves.append(Curve(label, rounds, np.nancumsum(values) if cumulative else values))
    if not curves:
        return None
    ylabel = key
    if cumulative:
        scale, ylabel = byte_scale(max(float(c.y.max()) for c in curves))
        curves = [Curve(c.label, c.x, c.y / scale) for c in curves]
    return curves_figure([Panel(title, ylabel, curves)], panel_size=(8.0, 4.2))


def _figures_table(runs: Sequence[RunData], labels: Sequence[str]) -> str:
    header = [
        "run",
        "final",
        "best",
        "rounds",
        "total bytes up",
        "total bytes down",
        "total wall time",
    ]
    rows = []
    for run, label in zip(runs, labels, strict=True):
        h = headline(run.records, run.metric)
        rows.append(
            [
                label,
                _with_metric(h["final"], run.metric),
                _with_metric(h["best"], run.metric),
                h["rounds"],
                hk.format_bytes(h["bytes_up"]),
                hk.format_bytes(h["bytes_down"]),
                hk.format_seconds(h["seconds"]),
            ]
        )
    return hk.table(rows, header)


def _with_metric(value: float | int | None, metric: str) -> str | None:
    return None if value is None else f"{hk.format_value(value)} ({metric.replace('_', ' ')})"


def write_compare(run_dirs: Sequence[Path], out: Path) -> Path:
    """Write one HTML page comparing runs, with its PNGs in `<out stem>_files/` beside it.

    Args:
        run_dirs: the run directories, each holding `metrics.jsonl`.
        out: the HTML file to write, e.g. `runs/compare.html`.

    Returns:
        `out`.

    Raises:
        FedFMError: no run directory was given, or one of them has no metrics.
    """
    if not run_dirs:
        raise FedFMError("compare needs at least one run directory")
    runs = [load_run(Path(d)) for d in run_dirs]
    labels = run_labels(runs)
    out = Path(out)
    png_dir = out.parent / f"{out.stem}_files"
    parts = [hk.section("Final figures", _figures_table(runs, labels))]
    for key, title, cum in COMPARED:
        fig = _overlay(runs, labels, key, title, cum)
        if fig is None:
            parts.append(hk.section(title, hk.note("Not recorded in any of these runs.")))
            continue
        img = hk.image(save_png(fig, png_dir / f"{key}.png"), title)
        parts.append(hk.section(title, img))
    title = "fedfm comparison: " + ", ".join(labels)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(hk.page(title, "\n".join(parts)), encoding="utf-8")
    return out
