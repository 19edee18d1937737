"""Matplotlib figures for reports, built from arrays (no knowledge of run directories).

Figures are made with `matplotlib.figure.Figure` rather than `pyplot`: no GUI backend, no
global figure registry to leak or close, and it works on headless machines. The Agg backend
is selected too, for code that reaches pyplot through matplotlib internals.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

matplotlib.use("Agg")

_MARKERS_UP_TO = 40  # draw point markers on curves with at most this many points


@dataclass(frozen=True)
class Curve:
    """One labelled line: `y` against `x` (usually rounds)."""

    label: str
    x: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class Panel:
    """One axes of a curves figure."""

    title: str
    ylabel: str
    curves: Sequence[Curve]
    xlabel: str = "round"
    xticks: Sequence[str] = ()  # labels for x = 0, 1, ... (categorical axes)


def save_png(fig: Figure, path: Path) -> bytes:
    """Render `fig` as PNG, write it to `path` and return the bytes (for inlining)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    png = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return png


def curves_figure(
    panels: Sequence[Panel], ncols: int = 2, panel_size: tuple[float, float] = (5.2, 3.4)
) -> Figure:
    """Panels of line plots side by side (wrapping after `ncols`), with legends when useful.

    Args:
        panels: one axes each.
        ncols: panels per row.
        panel_size: width and height of one panel, in inches.
    """
    ncols = max(1, min(ncols, len(panels)))
    nrows = -(-len(panels) // ncols)
    width, height = panel_size
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, panel in zip(axes, panels, strict=False):
        for curve in panel.curves:
            marker = "o" if len(curve.x) <= _MARKERS_UP_TO else None
            ax.plot(curve.x, curve.y, marker=marker, markersize=3, label=curve.label)
        ax.set(title=panel.title, xlabel=panel.xlabel, ylabel=panel.ylabel)
        if panel.xticks:
            ax.set_xticks(range(len(panel.xticks)), labels=list(panel.xticks))
        ax.grid(alpha=0.3)
        if len(panel.curves) > 1:
            ax.legend(fontsize="small")
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    return fig


def client_accuracy_figure(accuracy: Mapping[str, float], server_round: int) -> Figure:
    """Per-client accuracy at one round: sorted bars (left) and a histogram (right)."""
    ids = sorted(accuracy, key=lambda k: accuracy[k])
    values = np.array([accuracy[k] for k in ids])
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    bars, hist = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    bars.bar(np.arange(len(values)), values, width=0.9, color="tab:blue")
    if len(ids) <= 40:
        bars.set_xticks(np.arange(len(ids)), ids, fontsize="small", rotation=90)
    else:
        bars.set_xticks([])
    bars.axhline(values.mean(), color="tab:red", linestyle="--", label="mean")
    title = f"clients sorted by accuracy (round {server_round})"
    bars.set(title=title, xlabel="client", ylabel="accuracy")
    bars.legend(fontsize="small")
    hist.hist(values, bins=min(20, max(5, len(values) // 3)), color="tab:blue", alpha=0.8)
    hist.set(title="distribution", xlabel="accuracy", ylabel="clients")
    return fig


def participation_figure(
    rounds: np.ndarray,
    client_ids: Sequence[Sequence[int | str]],
    num_failures: np.ndarray | None = None,
) -> Figure:
    """Which clients were sampled each round (top) and how many, with failures (bottom).

    Args:
        rounds: the round numbers, shape `(R,)`.
        client_ids: the sampled client ids of each round, `R` lists.
        num_failures: failed clients per round, shape `(R,)`, or `None`.
    """
    labels = sorted({str(c) for ids in client_ids for c in ids}, key=_id_sort_key)
    row = {label: i for i, label in enumerate(labels)}
    xs = np.array([r for r, ids in zip(rounds, client_ids, strict=True) for _ in ids])
    ys = np.array([row[str(c)] for ids in client_ids for c in ids])
    fig = Figure(figsize=(11, 6), layout="constrained")
    grid, counts = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    size = 36 if len(rounds) * len(labels) <= 2000 else 4
    grid.scatter(xs, ys, s=size, marker="s", color="tab:blue", linewidths=0)
    if len(labels) <= 40:
        grid.set_yticks(np.arange(len(labels)), labels, fontsize="small")
    grid.set(title="sampled clients per round", ylabel="client")
    grid.set_ylim(-0.5, len(labels) - 0.5)
    sampled = np.array([len(ids) for ids in client_ids])
    counts.bar(rounds, sampled, width=0.8, color="tab:blue", label="sampled")
    if num_failures is not None and num_failures.any():
        counts.bar(rounds, num_failures, width=0.8, color="tab:red", label="failed")
        counts.legend(fontsize="small")
    counts.set(xlabel="round", ylabel="clients")
    return fig


def _id_sort_key(label: str) -> tuple[int, int, str]:
    """Numeric ids in numeric order, then other ids alphabetically."""
    return (0, int(label), "") if label.lstrip("-").isdigit() else (1, 0, label)


def stacked_bars_figure(
    rounds: np.ndarray, parts: Mapping[str, np.ndarray], title: str, ylabel: str
) -> Figure:
    """Bars per round, each stacked from `parts` (name -> values of shape `(R,)`)."""
    fig = Figure(figsize=(11, 3.8), layout="constrained")
    ax = fig.subplots()
    bottom = np.zeros(len(rounds))
    width = 0.8 if len(rounds) <= 200 else 1.0
    for name, values in parts.items():
        ax.bar(rounds, values, bottom=bottom, width=width, label=name, linewidth=0)
        bottom = bottom + values
    ax.set(title=title, xlabel="round", ylabel=ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", ncols=min(len(parts), 5))
    return fig
