"""Per-round metrics as JSON lines (`RUN_DIR/metrics.jsonl`) and the closing summary table."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

FILE_NAME = "metrics.jsonl"


class MetricsLog:
    """Appends one JSON object per round, flushed and fsynced, so a crash loses nothing.

    Args:
        run_dir: the run directory.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / FILE_NAME

    def on_round_end(self, record: dict[str, Any]) -> None:
        """Append `record` (a round's metrics)."""
        with self.path.open("a") as fh:
            fh.write(json.dumps(record, allow_nan=False, default=_jsonable) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def records(self) -> list[dict[str, Any]]:
        """All records written so far."""
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def restore(self, last_round: int, last_record: dict[str, Any] | None) -> None:
        """On resume: keep rounds up to `last_round`, re-adding that round's record if the
        crash came between checkpoint and log."""
        kept = [r for r in self.records() if r["round"] <= last_round]
        if last_record is not None and all(r["round"] != last_round for r in kept):
            kept.append(last_record)
        text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in kept)
        self.path.write_text(text)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def clean_record(record: dict[str, Any]) -> dict[str, Any]:
    """Replace non-finite floats by None (JSON has no NaN)."""
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()
    }


def summary_table(records: list[dict[str, Any]]) -> Table:
    """A rich table: one row per round with accuracy, loss, bytes and seconds."""
    table = Table(title="fedfm run summary")
    for col in ("round", "accuracy", "loss", "train loss", "clients", "KB up", "KB down", "s"):
        table.add_column(col, justify="right")
    for r in records:
        table.add_row(
            str(r["round"]),
            _fmt(r.get("accuracy"), ".4f"),
            _fmt(r.get("loss"), ".4f"),
            _fmt(r.get("train_loss"), ".4f"),
            f"{r.get('num_clients', 0) - r.get('num_failures', 0)}/{r.get('num_clients', 0)}",
            f"{r.get('bytes_up', 0) / 1024:.1f}",
            f"{r.get('bytes_down', 0) / 1024:.1f}",
            _fmt(r.get("seconds"), ".1f"),
        )
    return table


def print_summary(records: list[dict[str, Any]], console: Console | None = None) -> None:
    """Print `summary_table(records)`."""
    (console or Console()).print(summary_table(records))


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)
