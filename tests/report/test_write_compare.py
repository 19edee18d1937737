"""`write_compare` overlays several runs in one self-contained page."""

from __future__ import annotations

from pathlib import Path

import pytest
from report_testkit import assert_self_contained, fake_records, write_run

from fedfm.errors import FedFMError
from fedfm.report import write_compare


def test_compare_overlays_runs_and_tabulates_final_figures(tmp_path: Path) -> None:
    # Prepare
    run_a = write_run(tmp_path, "fedavg")
    run_b = write_run(tmp_path, "fedprox", records=fake_records(num_rounds=3))
    out = tmp_path / "out" / "compare.html"

    # Execute
    path = write_compare([run_a, run_b], out)

    # Assert
    assert path == out
    html = out.read_text()
    assert_self_contained(html)
    assert "fedavg" in html and "fedprox" in html
    for png in ("accuracy.png", "loss.png", "bytes_up.png", "bytes_down.png"):
        assert (tmp_path / "out" / "compare_files" / png).stat().st_size > 0, png
    assert html.count("<tr>") == 3  # header + one row per run


def test_compare_fails_when_one_run_has_no_metrics(tmp_path: Path) -> None:
    # Prepare
    empty = tmp_path / "empty"
    empty.mkdir()

    # Execute / Assert
    with pytest.raises(
        FedFMError, match=r"^no metrics in .*empty: metrics.jsonl missing or empty$"
    ):
        write_compare([write_run(tmp_path), empty], tmp_path / "compare.html")
    assert not (tmp_path / "compare.html").exists()


def test_compare_needs_a_run(tmp_path: Path) -> None:
    # Execute / Assert
    with pytest.raises(FedFMError, match="at least one"):
        write_compare([], tmp_path / "compare.html")
