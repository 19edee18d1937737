"""Read a run directory (`metrics.jsonl`, `config.json`, `summary.json`) and pick series from it.

One `metrics.jsonl` line per completed round. Reading is forgiving where a real run can leave
debris (blank lines, a half-written last line after a crash, rounds repeated after a resume)
and strict elsewhere: anything else malformed raises a one-line `FedFMError`.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedfm.errors import FedFMError

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"

Record = dict[str, Any]


@dataclass(frozen=True)
class RunData:
    """Everything a report reads from one run directory.

    Attributes:
        path: the run directory.
        records: one metrics record per round, sorted by `round`, one per round.
        config: the run's config (`{}` when `config.json` is absent).
        summary: the final figures of `summary.json`, or `None` when absent.
    """

    path: Path
    records: tuple[Record, ...]
    config: Mapping[str, Any] = field(default_factory=dict)
    summary: Mapping[str, Any] | None = None

    @property
    def metric(self) -> str:
        """The task's primary metric (`accuracy`, or `exact_match` for instruction tuning)."""
        from fedfm.tasks.configs import primary_metric

        return primary_metric(self.config.get("task", {}).get("name"))

    @property
    def name(self) -> str:
        """The run directory's name, used as its label in titles and legends."""
        return self.path.resolve().name


def is_number(value: object) -> bool:
    """True for a JSON number: an int or a float, but not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _parse_lines(path: Path) -> list[Record]:
    lines = [(i, line) for i, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    records: list[Record] = []
    for pos, (lineno, line) in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if pos == len(lines) - 1 and records:
                # A run killed mid-write leaves a truncated last line: keep the complete rounds.
                warnings.warn(f"{path}:{lineno}: skipping a truncated last line", stacklevel=3)
                break
            raise FedFMError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(record, dict) or not is_number(record.get("round")):
            raise FedFMError(f"{path}:{lineno}: expected a JSON object with a numeric 'round'")
        records.append(record)
    return records


def load_metrics(run_dir: Path) -> list[Record]:
    """Read `RUN_DIR/metrics.jsonl`: one record per round, sorted by round.

    Blank lines are skipped; when a round appears twice (a run resumed from a checkpoint
    repeats rounds) the later line wins.

    Args:
        run_dir: the run directory.

    Returns:
        The records, sorted by `round`, at least one.

    Raises:
        FedFMError: the directory or file is missing or holds no record, or a line is
            malformed (other than a truncated last line, which is skipped with a warning).
    """
    path = Path(run_dir) / METRICS_FILE
    records = _parse_lines(path) if path.is_file() else []
    if not records:
        raise FedFMError(f"no metrics in {run_dir}: {METRICS_FILE} missing or empty")
    by_round = {int(r["round"]): r for r in records}
    return [by_round[k] for k in sorted(by_round)]


def _load_json_object(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise FedFMError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(value, dict):
        raise FedFMError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def load_run(run_dir: Path) -> RunData:
    """Read a run directory; `config.json` and `summary.json` are optional.

    Raises:
        FedFMError: as `load_metrics`, or when `config.json`/`summary.json` is not a JSON object.
    """
    run_dir = Path(run_dir)
    records = load_metrics(run_dir)
    config = _load_json_object(run_dir / CONFIG_FILE) or {}
    summary = _load_json_object(run_dir / SUMMARY_FILE)
    return RunData(path=run_dir, records=tuple(records), config=config, summary=summary)


def series(records: Sequence[Record], key: str) -> tuple[np.ndarray, np.ndarray]:
    """The rounds where `key` holds a number, and those numbers.

    Args:
        records: metrics records.
        key: a per-round key, e.g. `"accuracy"`.

    Returns:
        `(rounds, values)`, two float arrays of equal length; empty when never recorded.
    """
    pairs = [(float(r["round"]), float(r[key])) for r in records if is_number(r.get(key))]
    if not pairs:
        return np.empty(0), np.empty(0)
    rounds, values = zip(*pairs, strict=True)
    return np.array(rounds), np.array(values)


def has_numbers(records: Sequence[Record], key: str) -> bool:
    """True when `key` holds a finite number in at least one record."""
    return any(is_number(r.get(key)) and math.isfinite(r[key]) for r in records)


def last_with(records: Sequence[Record], key: str) -> Record | None:
    """The last record whose `key` is a non-empty mapping, or `None`."""
    for record in reversed(records):
        value = record.get(key)
        if isinstance(value, Mapping) and value:
            return record
    return None
