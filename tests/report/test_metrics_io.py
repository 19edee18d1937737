"""Reading run directories: forgiving with crash debris, one-line errors otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from report_testkit import write_run

from fedfm.errors import FedFMError
from fedfm.report.headline import headline
from fedfm.report.metrics_io import load_metrics, load_run, series


@pytest.mark.parametrize("case", ["missing_dir", "missing_file", "empty_file", "blank_lines"])
def test_no_metrics_raises_one_line_fedfm_error(tmp_path: Path, case: str) -> None:
    # Prepare
    run_dir = tmp_path / "run"
    if case != "missing_dir":
        run_dir.mkdir()
    if case == "empty_file":
        (run_dir / "metrics.jsonl").write_text("")
    if case == "blank_lines":
        (run_dir / "metrics.jsonl").write_text("\n  \n\n")

    # Execute
    with pytest.raises(FedFMError) as info:
        load_metrics(run_dir)

    # Assert
    message = str(info.value)
    assert message == f"no metrics in {run_dir}: metrics.jsonl missing or empty"
    assert "\n" not in message


def test_blank_lines_truncated_tail_and_repeated_rounds(tmp_path: Path) -> None:
    # Prepare: round 2 was repeated after a resume, the last line was cut by a crash.
    lines = [
        json.dumps({"round": 1, "accuracy": 0.1}),
        "",
        json.dumps({"round": 2, "accuracy": 0.2}),
        json.dumps({"round": 2, "accuracy": 0.25}),
        json.dumps({"round": 3, "accuracy": 0.3}),
        '{"round": 4, "accur',
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines))

    # Execute
    with pytest.warns(UserWarning, match="truncated"):
        records = load_metrics(tmp_path)

    # Assert
    assert [r["round"] for r in records] == [1, 2, 3]
    assert records[1]["accuracy"] == 0.25


def test_malformed_middle_line_names_file_and_line(tmp_path: Path) -> None:
    # Prepare
    (tmp_path / "metrics.jsonl").write_text('{"round": 1}\nnot json\n{"round": 3}\n')

    # Execute / Assert
    with pytest.raises(FedFMError, match=r"metrics.jsonl:2: not valid JSON"):
        load_metrics(tmp_path)


def test_series_skips_rounds_without_a_value(tmp_path: Path) -> None:
    # Prepare
    run = load_run(write_run(tmp_path))

    # Execute
    rounds, acc = series(run.records, "accuracy")

    # Assert
    assert rounds.tolist() == [2.0, 4.0]
    assert acc.tolist() == pytest.approx([0.6, 0.7])
    assert run.summary is None
    assert run.config["strategy"] == {"name": "FedAvg"}


def test_headline_figures(tmp_path: Path) -> None:
    # Prepare
    run = load_run(write_run(tmp_path))

    # Execute
    h = headline(run.records)

    # Assert
    assert h["final"] == pytest.approx(0.7)
    assert h["best"] == pytest.approx(0.7)
    assert h["best_round"] == 4
    assert h["rounds"] == 5
    assert h["bytes_up"] == 3000 * (1 + 2 + 3 + 4 + 5)
    assert h["bytes_down"] == 5 * 5000
    assert h["seconds"] == pytest.approx(7.5)
