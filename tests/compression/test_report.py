"""The report shows bytes per round both ways and the codec stages' metrics."""

import json

from fedfm.report import write_report


def test_the_report_has_a_compression_section_with_per_round_metrics(tmp_path):
    # Prepare: two rounds of an int8-both-ways run with a budget that stopped it
    rows = [{"round": 0, "accuracy": 0.5, "bytes_up": 0, "bytes_down": 0}]
    for r in (1, 2):
        rows.append(
            {
                "round": r,
                "accuracy": 0.6,
                "bytes_up": 1000 + r,
                "bytes_down": 2000 + r,
                "int8/ratio": 0.25,
                "int8/rel_error": 0.01 * r,
                "downlink/int8/ratio": 0.26,
                "downlink/int8/rel_error": 0.003,
                "epsilon": 1.0,
            }
        )
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "config.json").write_text(json.dumps({"comm": {"max_bytes": 9000}}))
    (tmp_path / "summary.json").write_text(json.dumps({"stopped": "stopped before round 3: x"}))
    # Execute
    html = write_report(tmp_path).read_text()
    # Assert
    compression = html.split("<h2>Compression</h2>")[1].split("</section>")[0]
    assert "compression.png" not in compression and "data:image/png" in compression
    for text in ("downlink/int8/rel_error", "int8/ratio", "1,002", "2,002", "0.02"):
        assert text in compression, text
    assert (tmp_path / "report" / "compression.png").exists()
    other = html.split("<h2>Other metrics</h2>")[1].split("</section>")[0]
    assert "epsilon" in other and "int8" not in other
    communication = html.split("<h2>Communication</h2>")[1].split("</section>")[0]
    assert "comm.max_bytes = 9,000 B" in communication and "stopped before round 3" in communication
