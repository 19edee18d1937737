"""metrics.jsonl stays strict JSON: non-finite values become null at every depth."""

import json
import math

from fedfm.records import MetricsLog, RoundRecord


def test_nan_in_a_clients_metric_is_written_as_null(tmp_path):
    # A client whose local test split has no classification example scores NaN on it
    record = RoundRecord(
        round=4,
        central={"exact_match": 0.34, "loss": math.inf},
        client_metrics={"exact_match": {"0": 0.6, "3": math.nan}},
    )
    log = MetricsLog(tmp_path)
    log.on_round_end(record)
    line = (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in line and "Infinity" not in line
    written = json.loads(line)
    assert written["client_exact_match"] == {"0": 0.6, "3": None}
    assert written["loss"] is None


def test_restore_cleans_a_record_stored_with_nan(tmp_path):
    # Checkpoints written before the fix hold the last record with a bare NaN in it
    log = MetricsLog(tmp_path)
    log.append({"round": 1, "exact_match": 0.1})
    stored = json.loads('{"round": 2, "client_exact_match": {"3": NaN}, "trace": [NaN, 1.0]}')
    log.restore(2, stored)
    rounds = log.records()
    assert [r["round"] for r in rounds] == [1, 2]
    assert rounds[1]["client_exact_match"] == {"3": None} and rounds[1]["trace"] == [None, 1.0]
