"""`fedfm synth` as a user runs it (in-process), on the tiny config with tiny-llama."""

import json

from typer.testing import CliRunner

from fedfm.cli import app
from fedfm.config import load_config
from tests.helpers import CONFIGS, DIGITS_TOML

SETS = [
    "--set",
    "synth.generate.model=tiny-llama",
    "--set",
    "synth.generate.max_new_tokens=6",
    "--set",
    "backend.threads=1",
]


def test_synth_on_a_config_writes_the_dataset_and_prints_the_counts(tmp_path):
    # Execute
    args = ["synth", str(CONFIGS / "tiny.toml"), "--out", str(tmp_path / "s"), "--per-class", "2"]
    result = CliRunner().invoke(app, [*args, *SETS])
    # Assert
    assert result.exit_code == 0, result.output
    card = json.loads((tmp_path / "s" / "data_card.json").read_text())
    assert card["counts"]["total"]["generated"] == 4
    assert card["config"]["synth"]["generate"]["per_class"] == 2
    assert (tmp_path / "s" / "examples.jsonl").exists()
    assert "total" in result.output and "examples and data card" in result.output


def test_synth_on_a_run_directory_uses_its_stored_config(tmp_path):
    # Prepare: a run directory holds the config it was started with
    cfg = load_config(CONFIGS / "tiny.toml", ["seed=5"])
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps(cfg.model_dump()))
    # Execute
    args = ["synth", str(tmp_path / "run"), "--out", str(tmp_path / "s"), "--per-class", "1"]
    result = CliRunner().invoke(app, [*args, *SETS])
    # Assert
    assert result.exit_code == 0, result.output
    card = json.loads((tmp_path / "s" / "data_card.json").read_text())
    assert card["central_test_split"]["seed"] == 5


def test_synth_on_a_task_without_classes_exits_with_one_line(tmp_path):
    result = CliRunner().invoke(app, ["synth", str(DIGITS_TOML), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "fedfm synth needs task.name='text_classification'" in result.output
    assert not (tmp_path / "data_card.json").exists()
