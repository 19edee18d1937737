"""`write_report` writes a self-contained HTML page and its PNGs from a run directory."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from report_testkit import assert_self_contained, write_run

from fedfm.errors import FedFMError
from fedfm.report import sections, write_report

EXPECTED_PNGS = (
    "accuracy.png",
    "bytes.png",
    "client_accuracy.png",
    "participation.png",
    "wall_time.png",
    "other_metrics.png",
)


def test_report_is_self_contained_with_every_section(tmp_path: Path) -> None:
    # Prepare
    summary = {
        "personalized_accuracy": {str(c): 0.6 + 0.05 * c for c in range(6)},
        "local_only": {"mean": 0.55, "client_accuracy": {str(c): 0.6 for c in range(6)}},
        "epsilon": 2.0,
    }
    run_dir = write_run(tmp_path, "run_full", summary=summary)

    # Execute
    path = write_report(run_dir)

    # Assert
    assert path == run_dir / "report" / "report.html"
    html = path.read_text()
    assert_self_contained(html)
    assert "run_full" in html
    for png in EXPECTED_PNGS:
        data = (path.parent / png).read_bytes()
        assert data.startswith(b"\x89PNG") and b"http" not in data, png
    assert html.count("data:image/png;base64,") == len(EXPECTED_PNGS)
    assert "share worse than local-only" in html
    assert "personalized" in html
    assert "Per-round metrics without a section of their own: epsilon." in html
    assert "&lt;b&gt;&amp;&lt;/b&gt;" in html  # config text is escaped
    assert "<b>&</b>" not in html


def test_sections_without_data_say_not_recorded(tmp_path: Path) -> None:
    # Prepare: a bare run, accuracy only, never evaluated per client.
    run_dir = write_run(tmp_path, "bare", records=[{"round": 1, "accuracy": None}, {"round": 2}])

    # Execute
    path = write_report(run_dir)

    # Assert
    html = path.read_text()
    assert "Not recorded in this run." in html
    assert "data:image/png;base64," not in html
    assert list(path.parent.glob("*.png")) == []


def test_a_registered_section_takes_its_keys_out_of_other_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a new named section is one function and one decorator.
    monkeypatch.setattr(sections, "SECTIONS", list(sections.SECTIONS))

    @sections.register_section("Privacy", keys=("epsilon",))
    def privacy(run: sections.RunData, out_dir: Path) -> str:
        last = run.records[-1]["epsilon"]
        return f"<p>final epsilon {last}</p>"

    # Execute
    html = write_report(write_run(tmp_path)).read_text()

    # Assert
    assert "<h2>Privacy</h2>" in html
    assert "final epsilon 2.0" in html
    assert "Per-round metrics without a section of their own" not in html


def test_run_dir_without_metrics_raises(tmp_path: Path) -> None:
    # Execute
    with pytest.raises(FedFMError) as info:
        write_report(tmp_path / "nowhere")

    # Assert
    assert re.fullmatch(r"no metrics in .*nowhere: metrics.jsonl missing or empty", str(info.value))
