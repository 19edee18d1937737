"""`RoundRecord`: one round's metrics, written by the loop and the baselines alike; the
`metrics.jsonl` log; the closing summary table.

A record is a dataclass in memory and a flat JSON object on disk (the task's central metrics,
`client_<metric>` mappings and stage metrics appear as top-level keys), so reports and
TensorBoard read every round the same way, whoever wrote it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedfm.checkpoint import atomic_write_bytes
from fedfm.rundir import metrics_path

Json = dict[str, Any]


@dataclass
class RoundRecord:
    """One round's figures.

    Attributes:
        round: the round number (the baselines use their own numbering of "rounds").
        central: the task's central metrics (e.g. `accuracy`, `loss`); `None` values when
            the round was not evaluated.
        train_loss: mean of the clients' training losses.
        update_norm: median L2 norm of the accepted updates.
        bytes_up: serialised bytes the accepted clients uploaded.
        bytes_down: serialised bytes the server sent.
        num_clients: clients asked to train.
        num_failures: clients whose work was not used.
        clients: the ids of the clients asked.
        failures: one line per failure (`client <id>: <kind>: <detail>`).
        error: set when the round failed as a whole and the global state was kept.
        client_metrics: per-client evaluation: metric -> client id -> value.
        client_num_examples: client id -> local test examples.
        extra: further numbers (stage metrics averaged over clients, ...).
        seconds_fit / seconds_aggregate / seconds_eval / seconds_checkpoint / seconds: wall
            time of the steps and of the whole round.
    """

    round: int
    central: dict[str, float | None] = field(default_factory=dict)
    train_loss: float | None = None
    update_norm: float | None = None
    bytes_up: int = 0
    bytes_down: int = 0
    num_clients: int = 0
    num_failures: int = 0
    clients: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    error: str | None = None
    client_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    client_num_examples: dict[str, int] = field(default_factory=dict)
    extra: dict[str, float] = field(default_factory=dict)
    seconds_fit: float = 0.0
    seconds_aggregate: float = 0.0
    seconds_eval: float = 0.0
    seconds_checkpoint: float = 0.0
    seconds: float = 0.0

    def to_json(self) -> Json:
        """The flat JSON object of `metrics.jsonl` (non-finite floats become null)."""
        out: Json = {"round": self.round, **self.central}
        out.update(
            train_loss=self.train_loss,
            update_norm=self.update_norm,
            bytes_up=self.bytes_up,
            bytes_down=self.bytes_down,
            num_clients=self.num_clients,
            num_failures=self.num_failures,
            clients=list(self.clients),
        )
        if self.failures:
            out["failures"] = list(self.failures)
        if self.error is not None:
            out["error"] = self.error
        out.update(
            seconds_fit=self.seconds_fit,
            seconds_aggregate=self.seconds_aggregate,
            seconds_eval=self.seconds_eval,
        )
        for metric, values in self.client_metrics.items():
            out[f"client_{metric}"] = dict(values)
        if self.client_num_examples:
            out["client_num_examples"] = dict(self.client_num_examples)
        out.update(self.extra)
        out.update(seconds_checkpoint=self.seconds_checkpoint, seconds=self.seconds)
        return clean_record(out)


def clean_record(record: Json) -> Json:
    """Replace non-finite floats by None (JSON has no NaN), in nested objects too.

    A client whose local test split holds no example of some kind scores NaN on it, and that
    value sits one level down (`client_exact_match: {"3": nan}`).
    """
    return {k: _clean(v) for k, v in record.items()}


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


class MetricsLog:
    """Appends one JSON object per round, flushed and fsynced, so a crash loses nothing.

    Args:
        run_dir: the run directory.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = metrics_path(run_dir)

    def on_round_end(self, record: RoundRecord) -> None:
        """Append `record`."""
        self.append(record.to_json())

    def append(self, record: Json) -> None:
        """Append one JSON record."""
        with self.path.open("a") as fh:
            fh.write(json.dumps(clean_record(record), allow_nan=False, default=_jsonable) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def records(self) -> list[Json]:
        """All complete records written so far (a truncated last line, which a kill during
        an append leaves, is skipped)."""
        if not self.path.exists():
            return []
        lines = [x for x in self.path.read_text().splitlines() if x.strip()]
        out = []
        for i, line in enumerate(lines):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                if i == len(lines) - 1:
                    break
                raise
        return out

    def restore(self, last_round: int, last_record: Json | None) -> None:
        """On resume: keep rounds up to `last_round`, re-adding that round's record if the
        crash came between checkpoint and log; the file is replaced atomically."""
        kept = [r for r in self.records() if r.get("round", math.inf) <= last_round]
        if last_record is not None and all(r["round"] != last_round for r in kept):
            kept.append(last_record)
        text = "".join(json.dumps(clean_record(r), allow_nan=False) + "\n" for r in kept)
        atomic_write_bytes(self.path, text.encode())


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def mean_metrics(
    metrics: Sequence[Mapping[str, float]], skip: Sequence[str] = ()
) -> dict[str, float]:
    """Per key, the mean of the finite numeric values over clients (keys in first-seen order)."""
    sums: dict[str, list[float]] = {}
    for m in metrics:
        for k, v in m.items():
            if k in skip or isinstance(v, bool) or not isinstance(v, int | float):
                continue
            if math.isfinite(v):
                sums.setdefault(k, []).append(float(v))
    return {k: math.fsum(v) / len(v) for k, v in sums.items()}


def summary_table(records: list[Json], metric: str = "accuracy") -> Any:
    """A rich table: one row per round with the primary metric, loss, bytes and seconds."""
    from rich.table import Table

    table = Table(title="fedfm run summary")
    for col in (
        "round",
        metric.replace("_", " "),
        "loss",
        "train loss",
        "clients",
        "KB up",
        "KB down",
        "s",
    ):
        table.add_column(col, justify="right")
    for r in records:
        table.add_row(
            str(r["round"]),
            _fmt(r.get(metric), ".4f"),
            _fmt(r.get("loss"), ".4f"),
            _fmt(r.get("train_loss"), ".4f"),
            f"{r.get('num_clients', 0) - r.get('num_failures', 0)}/{r.get('num_clients', 0)}",
            f"{r.get('bytes_up', 0) / 1024:.1f}",
            f"{r.get('bytes_down', 0) / 1024:.1f}",
            _fmt(r.get("seconds"), ".1f"),
        )
    return table


def print_summary(records: list[Json], console: Any = None, metric: str = "accuracy") -> None:
    """Print `summary_table(records, metric)`."""
    from rich.console import Console

    (console or Console()).print(summary_table(records, metric))


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)
