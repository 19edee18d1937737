from pathlib import Path

import pytest

from fedfm.config import Config, load_config
from fedfm.errors import ConfigError


def test_defaults_validate():
    cfg = load_config(None)
    assert isinstance(cfg, Config)
    assert cfg.adapter.method == "lora"


def test_default_toml_loads():
    cfg = load_config(Path(__file__).parents[1] / "configs" / "default.toml")
    assert cfg.task.model == "minilm" and cfg.partition.num_clients == 50


def test_override_types_are_parsed():
    cfg = load_config(None, ["partition.alpha=0.1", "adapter.target_modules=['query']", "seed=7"])
    assert cfg.partition.alpha == 0.1
    assert cfg.adapter.target_modules == ["query"]
    assert cfg.seed == 7


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("task.model=nope", "task.model: Input should be 'minilm' or 'tiny-bert'"),
        ("task.bogus=1", "task.bogus: unknown key (allowed: name, model, dataset"),
        ("task.name=nope", "task.name: 'nope' is not one of 'text_classification', 'digits'"),
        ("strategy.clients_per_round=null", "set strategy.fraction or strategy.clients_per_round"),
        ("partition.alpha=-1", "partition.alpha: Input should be greater than 0"),
        ("partition.bogus=1", "partition.bogus: unknown key (allowed: name, num_clients"),
        ("client.optimizer=adam", "client.optimizer: Input should be 'adamw' or 'sgd'"),
        ("nothing", "--set expects key=value"),
        ("pipeline.uplink=[{clip_norm=1}]", "pipeline.uplink.0.name: missing (one of clip, fp16"),
        ("pipeline.uplink=[{name='clip', bogus=1}]", "pipeline.uplink.0.bogus: unknown key"),
    ],
)
def test_bad_values_give_one_line_naming_the_key(override, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml")


def test_null_unsets_an_optional_setting():
    cfg = load_config(None, ["eval.federated_every=3", "eval.federated_every=null"])
    assert cfg.eval.federated_every is None


def test_a_task_section_without_a_name_is_the_default_task():
    cfg = load_config(None, ["task.model=tiny-bert"])
    assert cfg.task.name == "text_classification" and cfg.task.model == "tiny-bert"
