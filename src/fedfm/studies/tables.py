"""The init study's results: one row per cell, a Markdown table, and two figures.

Rounds to target: the first round whose central accuracy reaches `TARGET_SHARE` of the
pre-trained centralised reference of the same task (so the bar is the same for both starts
and means "close to what pooling the data would give").
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fedfm.records import MetricsLog
from fedfm.studies.init import CENTRALISED, IID, INITS, STRATEGIES, Cell

TARGET_SHARE = 0.9  # of the pre-trained centralised accuracy


@dataclass(frozen=True)
class Row:
    """A finished cell's figures."""

    task: str
    init: str
    strategy: str
    split: str
    final: float
    best: float
    rounds_to_target: int | None  # None: never reached within the rounds run
    target: float
    gap_to_centralised: float  # centralised (same start) minus this cell's final; 0 for it


def _curve(run_dir: Path, metric: str) -> list[tuple[int, float]]:
    return [
        (int(r["round"]), float(r[metric]))
        for r in MetricsLog(run_dir).records()
        if r.get(metric) is not None
    ]


def collect(dirs: Mapping[Cell, Path], metric: str = "accuracy") -> list[Row]:
    """One `Row` per cell with a curve; cells without any record yet are left out."""
    curves = {cell: _curve(d, metric) for cell, d in dirs.items()}
    curves = {cell: c for cell, c in curves.items() if c}
    central = {
        (cell.task, cell.init): c[-1][1]
        for cell, c in curves.items()
        if cell.strategy == CENTRALISED
    }
    rows = []
    for cell, curve in curves.items():
        reference = central.get((cell.task, "pretrained"), math.nan)
        target = TARGET_SHARE * reference
        reached = [r for r, v in curve if r > 0 and v >= target]
        final = curve[-1][1]
        rows.append(
            Row(
                task=cell.task,
                init=cell.init,
                strategy=cell.strategy,
                split=cell.split,
                final=final,
                best=max(v for _, v in curve),
                rounds_to_target=reached[0] if reached else None,
                target=target,
                gap_to_centralised=central.get((cell.task, cell.init), math.nan) - final,
            )
        )
    return rows


def markdown(rows: Sequence[Row]) -> str:
    """The table: per task, start and strategy, final accuracy per split and the gaps."""
    splits = _splits(rows)
    header = ["task", "start", "strategy", *splits, "mean gap to centralised", "rounds to target"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    by_key = {(r.task, r.init, r.strategy, r.split): r for r in rows}
    for task in sorted({r.task for r in rows}):
        for init in INITS:
            for strategy in (CENTRALISED, *STRATEGIES):
                cells = [by_key.get((task, init, strategy, s)) for s in splits]
                if strategy == CENTRALISED:
                    cells = [by_key.get((task, init, strategy, "pooled"))] * len(splits)
                found = [c for c in cells if c is not None]
                if not found:
                    continue
                gaps = [c.gap_to_centralised for c in found]
                reach = ", ".join(
                    "-"
                    if c is None
                    else ("never" if c.rounds_to_target is None else str(c.rounds_to_target))
                    for c in cells
                )
                lines.append(
                    "| "
                    + " | ".join(
                        [
                            task,
                            init,
                            strategy,
                            *("-" if c is None else f"{c.final:.3f}" for c in cells),
                            f"{np.mean(gaps):+.3f}",
                            reach,
                        ]
                    )
                    + " |"
                )
    return "\n".join(lines)


def _splits(rows: Sequence[Row]) -> list[str]:
    """The federated splits present, by growing alpha, IID last (the limit alpha -> inf)."""
    alphas = sorted({float(r.split) for r in rows if r.split not in (IID, "pooled")})
    found = {r.split for r in rows}
    return [s for s in (*(str(a) for a in alphas), IID) if s in found]


def write_csv(rows: Sequence[Row], path: Path) -> None:
    """Every row, every field."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(Row.__dataclass_fields__))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)


def figures(rows: Sequence[Row], out: Path) -> list[Path]:
    """`accuracy_vs_alpha.png` and `gap_to_centralised.png`, one panel per task."""
    from fedfm.report.plots import Curve, Panel, curves_figure, save_png

    splits = _splits(rows)
    x = np.arange(len(splits), dtype=float)
    by_key = {(r.task, r.init, r.strategy, r.split): r for r in rows}
    accuracy, gap = [], []
    for task in sorted({r.task for r in rows}):
        acc_curves, gap_curves = [], []
        for init in INITS:
            for strategy in STRATEGIES:
                got = [by_key.get((task, init, strategy, s)) for s in splits]
                label = f"{init} {strategy}"
                acc = np.array([np.nan if g is None else g.final for g in got])
                gp = np.array([np.nan if g is None else g.gap_to_centralised for g in got])
                acc_curves.append(Curve(label, x, acc))
                gap_curves.append(Curve(label, x, gp))
            ref = by_key.get((task, init, CENTRALISED, "pooled"))
            if ref is not None:
                acc_curves.append(Curve(f"{init} centralised", x, np.full_like(x, ref.final)))
        xlabel = "Dirichlet alpha (label skew falls to the right)"
        accuracy.append(Panel(f"{task}: final accuracy", "accuracy", acc_curves, xlabel, splits))
        gap.append(
            Panel(f"{task}: centralised - federated", "accuracy gap", gap_curves, xlabel, splits)
        )
    paths = [out / "accuracy_vs_alpha.png", out / "gap_to_centralised.png"]
    for panels, path in zip((accuracy, gap), paths, strict=True):
        save_png(curves_figure(panels), path)
    return paths


def write_results(dirs: Mapping[Cell, Path], out: Path) -> str:
    """`study.md` (the table), `study.csv` and the figures in `out`; returns the table."""
    rows = collect(dirs)
    table = markdown(rows)
    targets = {r.task: r.target for r in rows}
    target = ", ".join(f"{task} {value:.3f}" for task, value in sorted(targets.items()))
    text = (
        "# Pre-trained vs random start\n\nFinal central test accuracy per Dirichlet alpha "
        f"(IID last); rounds to target: first round at {TARGET_SHARE:.0%} of the pre-trained "
        f"centralised accuracy ({target}), per split in the same order.\n\n{table}\n"
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.md").write_text(text)
    write_csv(rows, out / "study.csv")
    if rows:
        figures(rows, out)
    return table
