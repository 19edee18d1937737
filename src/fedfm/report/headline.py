"""The few final figures of a run that a report leads with and a comparison tabulates."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedfm.report.metrics_io import Record, has_numbers, series


def _total(records: Sequence[Record], key: str) -> float | None:
    """Sum of `key` over the rounds that record it, or `None` when no round does."""
    return float(np.nansum(series(records, key)[1])) if has_numbers(records, key) else None


def headline(records: Sequence[Record], metric: str = "accuracy") -> dict[str, float | int | None]:
    """Final figures of a run; a figure is `None` when the run never recorded it.

    Args:
        records: the run's metrics records, sorted by round, at least one.
        metric: the task's primary metric.

    Returns:
        `final` (the last evaluated round's value of `metric`), `best` and `best_round`,
        `rounds` (the last round), `bytes_up`, `bytes_down` and `seconds` (totals over rounds).
    """
    rounds, acc = series(records, metric)
    finite = np.isfinite(acc)
    rounds, acc = rounds[finite], acc[finite]
    best = int(np.argmax(acc)) if len(acc) else None
    return {
        "final": float(acc[-1]) if len(acc) else None,
        "best": float(acc[best]) if best is not None else None,
        "best_round": int(rounds[best]) if best is not None else None,
        "rounds": int(records[-1]["round"]),
        "bytes_up": _total(records, "bytes_up"),
        "bytes_down": _total(records, "bytes_down"),
        "seconds": _total(records, "seconds"),
    }


def starting_points(records: Sequence[Record], metric: str) -> list[tuple[str, Any]]:
    """Round 0's figures as (label, value) rows: the starting point of `metric`, and the
    FM's zero-shot accuracy where the run logged it (`eval.zero_shot_shots`)."""
    first = next((r for r in records if r.get("round") == 0), None)
    if first is None:
        return []
    label = metric.replace("_", " ")
    rows: list[tuple[str, Any]] = [(f"{label} at round 0 (the start)", first.get(metric))]
    if first.get("zero_shot_accuracy") is not None:
        shots = int(first.get("zero_shot_shots") or 0)
        rows.append(
            (
                f"zero-shot accuracy (class prototypes, {shots} per class)",
                first["zero_shot_accuracy"],
            )
        )
    return rows


def setup(config: Mapping[str, Any]) -> str:
    """One line naming a run's setup from its config: model and data, adapter, strategy,
    partition and clients per round (empty when the config is unknown)."""
    if not config:
        return ""
    task = config.get("task", {})
    what = (
        f"{task['model']} on {task['dataset']}"
        if "model" in task and "dataset" in task
        else str(task.get("name", "?"))
    )
    adapter = config.get("adapter", {})
    how = str(adapter.get("method", "?"))
    if how == "lora":
        how = f"LoRA r={adapter.get('r')}"
    part = config.get("partition", {})
    split = str(part.get("name", "?"))
    if split == "dirichlet":
        split = f"Dirichlet α={part.get('alpha')}"
    strategy = config.get("strategy", {})
    per_round = strategy.get("clients_per_round") or f"{strategy.get('fraction')} of"
    mode = config.get("mode", "federated")
    who = strategy.get("name", "?") if mode == "federated" else mode
    return (
        f"{what} + {how}, {who}, {split} split into {part.get('num_clients')} clients, "
        f"{per_round} per round, {config.get('rounds')} rounds"
    )
