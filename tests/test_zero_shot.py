"""The FM's zero-shot starting point (nearest class prototype) logged with round 0."""

import pytest

from fedfm.build import build
from fedfm.config import load_config
from fedfm.errors import ConfigError
from fedfm.report.report import write_report
from fedfm.run import run
from fedfm.zero_shot import prototype_zero_shot
from tests.helpers import TINY, records


def test_round_zero_logs_the_prototype_classifier_and_the_report_shows_it(tmp_path):
    # Prepare
    cfg = load_config(None, [*TINY, "rounds=1", "eval.zero_shot_shots=4"])
    built = build(cfg)
    direct = prototype_zero_shot(built.task, built.data, 4, cfg.seed)  # type: ignore[arg-type]
    # Execute
    run(cfg, tmp_path)
    # Assert: round 0 holds the same score (seeded draw, deterministic encoder), round 1 not
    rows = records(tmp_path)
    assert rows[0]["zero_shot_accuracy"] == direct["zero_shot_accuracy"]
    assert 0.0 <= direct["zero_shot_accuracy"] <= 1.0 and rows[0]["zero_shot_shots"] == 4
    assert "zero_shot_accuracy" not in rows[1]
    html = write_report(tmp_path).read_text()
    assert "zero-shot accuracy (class prototypes, 4 per class)" in html


def test_more_shots_draw_other_prototypes_and_off_logs_nothing(tmp_path):
    built = build(load_config(None, TINY))
    one = prototype_zero_shot(built.task, built.data, 1, 0)  # type: ignore[arg-type]
    many = prototype_zero_shot(built.task, built.data, 16, 0)  # type: ignore[arg-type]
    again = prototype_zero_shot(built.task, built.data, 16, 0)  # type: ignore[arg-type]
    assert many["zero_shot_accuracy"] == again["zero_shot_accuracy"]
    assert one["zero_shot_shots"] == 1 and many["zero_shot_shots"] == 16
    run(load_config(None, [*TINY, "rounds=1"]), tmp_path)
    assert "zero_shot_accuracy" not in records(tmp_path)[0]


def test_zero_shot_needs_text_classification():
    with pytest.raises(ConfigError, match=r"eval\.zero_shot_shots needs task\.name") as err:
        load_config(
            None, ["task.name=instruction", "task.model=tiny-llama", "eval.zero_shot_shots=2"]
        )
    assert "\n" not in str(err.value)
