"""The two uses of a synthetic dataset in a run (warm-up, fill-in of missing classes), and
the config checks of `[synth]`. The datasets are written by the real writer."""

import json

import numpy as np
import pytest

from fedfm.build import build
from fedfm.config import load_config
from fedfm.errors import ConfigError
from fedfm.run import run
from fedfm.synth.card import EXAMPLES, SyntheticExample, write_synthetic
from fedfm.synth.make import split_of
from tests.helpers import TINY, crash_and_resume, states_equal, toy_config

NAMES = ("neg", "pos")


def write_dir(out, per_class=12, names=NAMES, dataset="synthetic", split=None):
    """A synthetic set for the tiny task: class c uses words w{20c}..w{20c+19}."""
    rng = np.random.default_rng(7)
    rows = []
    for c, name in enumerate(names):
        for k in range(per_class):
            words = rng.integers(0, 20, size=int(rng.integers(4, 12))) + 20 * (c % 2)
            rows.append(
                SyntheticExample(" ".join(f"w{w}" for w in words), c, name, f"{name}-{k % 2}")
            )
    card = {"dataset": dataset, "label_names": list(names), "central_test_split": split}
    write_synthetic(out, rows, [], card)
    return out


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    return write_dir(tmp_path_factory.mktemp("synth"), split=split_of(load_config(None, TINY)))


def test_the_default_config_uses_no_synthetic_data(tiny_cfg):
    assert tiny_cfg.synth.path is None
    assert build(tiny_cfg).synthetic is None


def test_warmup_changes_the_start_for_every_mode_and_not_the_split(synth_dir):
    # Prepare
    plain = build(load_config(None, TINY))
    sets = [*TINY, f"synth.path={synth_dir}", "synth.warmup_steps=3"]
    # Execute
    warm = build(load_config(None, sets))
    baseline = build(load_config(None, [*sets, "mode=centralised"]), federated=False)
    # Assert: a new start, shared by the baselines; real examples and splits untouched
    assert not states_equal(plain.initial_state, warm.initial_state)
    assert states_equal(warm.initial_state, baseline.initial_state)
    n_real = len(plain.data.examples)
    assert len(warm.data.examples) == n_real + 24
    assert np.array_equal(warm.data.central_test, plain.data.central_test)
    for cid, shard in plain.data.clients.items():
        assert np.array_equal(warm.data.clients[cid].train, shard.train)
        assert np.array_equal(warm.data.clients[cid].test, shard.test)
    summary = warm.synthetic
    assert summary["warmup"]["examples"] == 24 and summary["warmup"]["steps_taken"] == 3
    assert summary["fill_missing"]["added"] == 0


def test_a_two_round_run_with_warmup_resumes_bitwise(synth_dir, tmp_path):
    # Prepare
    cfg = load_config(None, [*TINY, "rounds=2", f"synth.path={synth_dir}", "synth.warmup_steps=2"])
    full = run(cfg, tmp_path / "full")
    crashed = tmp_path / "crashed"
    # Execute
    resumed = crash_and_resume(cfg, crashed)
    # Assert
    assert states_equal(full, resumed)
    summary = json.loads((crashed / "summary.json").read_text())
    assert summary["synthetic"]["warmup"]["examples"] == 24
    assert summary["synthetic"]["examples_sha256"]


def test_fill_missing_adds_only_missing_classes_and_only_to_train(synth_dir):
    # Prepare: one label-sorted shard per client, so most clients hold one class
    base = [*TINY, "partition.name=shards", "partition.shards_per_client=1"]
    plain = build(load_config(None, base))
    filled = build(load_config(None, [*base, f"synth.path={synth_dir}", "synth.fill_missing=5"]))
    real, examples = plain.data.examples, filled.data.examples
    n_real = len(real)
    # Execute / Assert
    assert np.array_equal(filled.data.central_test, plain.data.central_test)
    missing_somewhere = 0
    for cid, shard in plain.data.clients.items():
        new = filled.data.clients[cid]
        assert np.array_equal(new.test, shard.test)
        assert np.array_equal(new.train[: len(shard.train)], shard.train)
        added = new.train[len(shard.train) :]
        missing = sorted(set(range(2)) - set(real.labels[shard.train].tolist()))
        missing_somewhere += bool(missing)
        assert len(added) == 5 * len(missing)
        assert (added >= n_real).all()
        assert sorted(set(examples.labels[added].tolist())) == missing
        got = filled.synthetic["fill_missing"]["clients"].get(str(cid), {})
        assert got == {NAMES[c]: 5 for c in missing}
    assert missing_somewhere >= 2
    assert filled.synthetic["fill_missing"]["added"] == 5 * missing_somewhere
    assert len(examples) == n_real + 5 * missing_somewhere  # no warm-up rows


def test_synthetic_rows_are_tokenised_like_real_ones(synth_dir):
    # Prepare
    from fedfm.data.datasets import read_texts
    from fedfm.synth.card import read_synthetic

    sets = [*TINY, "partition.name=shards", "partition.shards_per_client=1"]
    built = build(load_config(None, [*sets, f"synth.path={synth_dir}", "synth.warmup_steps=1"]))
    texts, *_ = read_texts("synthetic")
    examples = built.data.examples
    n_real = len(texts)
    # Assert: the task's encoder gives the stored ids of real rows, and of synthetic rows
    for i in (0, 5, 99):
        assert np.array_equal(built.task.encode_texts([texts[i]])[0], examples.input_ids[i])
    synthetic = read_synthetic(synth_dir).examples
    ids = built.task.encode_texts([e.text for e in synthetic])
    for k, e in enumerate(synthetic):
        assert np.array_equal(examples.input_ids[n_real + k], ids[k])
        assert examples.labels[n_real + k] == e.label
        assert examples.groups[n_real + k] == "synthetic"


def _bad_rows(tmp_path):
    folder = write_dir(tmp_path / "bad", names=("neg", "pos"))
    lines = (folder / EXAMPLES).read_text().splitlines()
    row = json.loads(lines[0]) | {"label_name": "maybe"}
    body = "\n".join([json.dumps(row), *lines[1:]]) + "\n"
    card = json.loads((folder / "data_card.json").read_text())
    import hashlib

    card["files"][EXAMPLES]["sha256"] = hashlib.sha256(body.encode()).hexdigest()
    (folder / EXAMPLES).write_text(body)
    (folder / "data_card.json").write_text(json.dumps(card))
    return folder


def _edited(tmp_path):
    folder = write_dir(tmp_path / "edited")
    with (folder / EXAMPLES).open("a") as fh:
        fh.write('{"text": "w1 w2 w3 w4", "label": 0, "label_name": "neg", "prompt_id": "x"}\n')
    return folder


@pytest.mark.parametrize(
    ("make", "sets", "message"),
    [
        (None, ["synth.warmup_steps=5"], "synth.warmup_steps needs synth.path"),
        (None, ["synth.fill_missing=5"], "synth.fill_missing needs synth.path"),
        ("good", [], "synth.path is set but unused"),
        ("empty", ["synth.warmup_steps=5"], "synth.path: {dir} has no examples.jsonl"),
        ("good", ["synth.warmup_steps=1", "task.dataset=debates"], "made for dataset 'synthetic'"),
        ("good", ["synth.fill_missing=13"], "synth.fill_missing=13 exceeds the 12 examples"),
        ("bad_rows", ["synth.warmup_steps=1"], "not one of the card's labels"),
        ("edited", ["synth.warmup_steps=1"], "differs from the one its card describes"),
        (None, ["synth.generate.tempreature=1"], "synth.generate.tempreature: unknown key"),
        (None, ["synth.generate.min_words=9", "synth.generate.max_words=8"], "min_words=9"),
    ],
)
def test_config_errors_are_one_line_naming_the_field(tmp_path, make, sets, message):
    # Prepare
    folder = {
        None: None,
        "good": lambda: write_dir(tmp_path / "good"),
        "empty": lambda: (tmp_path / "empty").mkdir() or tmp_path / "empty",
        "bad_rows": lambda: _bad_rows(tmp_path),
        "edited": lambda: _edited(tmp_path),
    }[make]
    path = folder() if folder else None
    extra = [f"synth.path={path}"] if path else []
    # Execute
    with pytest.raises(ConfigError) as err:
        load_config(None, [*TINY, *extra, *sets])
    # Assert
    text = str(err.value)
    assert message.format(dir=path) in text and "\n" not in text


def test_a_task_that_is_not_text_classification_is_refused(synth_dir):
    with pytest.raises(ConfigError, match=r"synth\.path needs task\.name='text_classification'"):
        toy_config(f"synth.path={synth_dir}", "synth.warmup_steps=1")


def test_classes_that_are_not_the_tasks_are_refused_at_build(tmp_path):
    folder = write_dir(tmp_path / "other", names=("bad", "good"))
    cfg = load_config(None, [*TINY, f"synth.path={folder}", "synth.warmup_steps=1"])
    with pytest.raises(ConfigError, match=r"its classes \['bad', 'good'\] are not the task's"):
        build(cfg)


def test_a_set_filtered_against_another_test_split_warns(synth_dir):
    cfg = load_config(None, [*TINY, "seed=3", f"synth.path={synth_dir}", "synth.warmup_steps=1"])
    with pytest.warns(UserWarning, match="another central test split"):
        build(cfg)
