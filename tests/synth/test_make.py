"""`synthesize` end to end on tiny models. Only the call of `model.generate` is replaced (by
scripted texts); prompts, decoding, cleaning, filters, the classifier and the files are real."""

import io
import json

import numpy as np
import pytest
from rich.console import Console

from fedfm.config import load_config
from fedfm.data.datasets import read_texts
from fedfm.data.federated import federate
from fedfm.synth.card import CARD, EXAMPLES, REJECTED, read_synthetic
from fedfm.synth.filters import REASONS
from fedfm.synth.make import synthesize
from fedfm.tasks.registry import build_task
from tests.helpers import TINY

SYNTH = [*TINY, "synth.generate.model=tiny-llama", "synth.generate.max_new_tokens=8"]
OK_NEG = "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10"
SCRIPT = {  # per class: the texts the "model" answers, in call order
    "neg": [
        OK_NEG,
        OK_NEG,  # exact duplicate
        "W1 w2 w3, w4 w5 w6 w7 w8 w9 w10!",  # exact duplicate once normalised
        "w1 w2 w3 w4 w5 w6 w7 w8 w9 w11",  # near duplicate: 7 of 9 shingles shared
        "w3",  # too short
        "{seed}",  # a copy of a seed shown in the prompt
        "{test}",  # a copy of a central test text
        "w25 w31 w22 w37 w28 w33 w21 w39",  # words of the other class: the classifier objects
    ],
    "pos": [
        "w21 w22 w23 w24 w25 w26 w27 w28 w29 w30",
        "w35 w36 w37 w38 w39 w20 w33",
        "w30 w31 w32 w34 w36 w38 w20 w22",
        "Here is one:\n\nw39 w37 w35 w33 w31 w29 w27 w25",  # the preamble is cleaned away
        "w5 w7 w9 w11 w13 w15 w17 w2",  # words of the other class
        "w24 w26 w28 w30 w32 w34 w36",
        "w23 w29 w31 w37 w21 w27 w35 w26",
        "w38 w32 w26 w20 w34 w28 w22 w36",
    ],
}
WANT = {  # class -> reason -> count
    "neg": {"exact_duplicate": 2, "near_duplicate": 1, "length": 1, "seed_overlap": 1}
    | {"test_overlap": 1, "label": 1},
    "pos": {"label": 1},
}


def _central_test_text(cfg):
    task = build_task(cfg)
    texts, *_ = read_texts(cfg.task.dataset)
    data = federate(task.load_examples(), cfg.data, cfg.partition, cfg.seed)
    return texts[int(data.central_test[0])]


def scripted_generation(monkeypatch, test_text):
    """Replace `new_tokens` (the one caller of `model.generate`) by the script above."""
    from fedfm.models.causal_lm import load_causal_tokenizer

    tokenizer = load_causal_tokenizer("tiny-llama")
    queues = {c: list(texts) for c, texts in SCRIPT.items()}

    def fake(module, input_ids, attention_mask, max_new_tokens, eos_id, pad_id, *a, **kw):
        out = []
        for row in input_ids.tolist():
            prompt = tokenizer.decode(row)
            label = prompt.rsplit("of class ", 1)[1].split(".")[0]
            seed = prompt.split("<|im_start|>assistant\n")[1].split("<|im_end|>")[0]
            text = queues[label].pop(0).replace("{seed}", seed).replace("{test}", test_text)
            out.append(tokenizer.encode(text, add_special_tokens=False))
        return out

    monkeypatch.setattr("fedfm.tasks.generation.new_tokens", fake)


@pytest.fixture(scope="module")
def scripted_dir(tmp_path_factory):
    monkeypatch = pytest.MonkeyPatch()
    cfg = load_config(None, [*SYNTH, "synth.generate.per_class=8"])
    scripted_generation(monkeypatch, _central_test_text(cfg))
    out = tmp_path_factory.mktemp("synth")
    try:
        report = synthesize(cfg, out, Console(file=io.StringIO()))  # the progress bar draws
    finally:
        monkeypatch.undo()
    return cfg, out, report


def test_each_filter_rejects_its_candidates_and_counts_them(scripted_dir):
    # Prepare
    _, out, report = scripted_dir
    counts = report.card["counts"]["per_class"]
    # Assert
    for name, want in WANT.items():
        got = {r: counts[name][r] for r in REASONS if counts[name][r]}
        assert got == want, name
    rejected = [json.loads(x) for x in (out / REJECTED).read_text().splitlines()]
    assert {(r["label_name"], r["reason"]) for r in rejected if r["label_name"] == "pos"} == {
        ("pos", "label")
    }
    kept = [e.text for e in report.kept]
    assert kept.count(OK_NEG) == 1
    assert "w39 w37 w35 w33 w31 w29 w27 w25" in kept


def test_the_card_counts_add_up_and_match_the_files(scripted_dir):
    # Prepare
    _, out, _ = scripted_dir
    card = json.loads((out / CARD).read_text())
    counts = card["counts"]
    # Assert
    for c in [*counts["per_class"].values(), counts["total"]]:
        assert c["generated"] == c["kept"] + sum(c[r] for r in REASONS)
    assert counts["total"]["generated"] == 16 and counts["total"]["kept"] == 8
    assert counts["total"]["rejected"] == 8
    assert card["files"][EXAMPLES]["rows"] == counts["total"]["kept"]
    assert card["files"][REJECTED]["rows"] == counts["total"]["rejected"]
    assert len((out / EXAMPLES).read_text().splitlines()) == 8
    synthetic = read_synthetic(out)
    assert synthetic.per_class() == {"neg": 1, "pos": 7}
    assert {e.prompt_id for e in synthetic.examples} <= {
        f"{n}-{k}" for n in SCRIPT for k in range(4)
    }


def test_the_card_records_generator_prompts_seeds_sampling_and_time(scripted_dir):
    # Prepare
    cfg, _, report = scripted_dir
    card = report.card
    task = build_task(cfg)
    data = federate(task.load_examples(), cfg.data, cfg.partition, cfg.seed)
    train = np.concatenate([c.train for c in data.clients.values()])
    # Assert
    assert card["generator"]["model"] == "tiny-llama"
    assert card["dataset"] == "synthetic" and card["label_names"] == ["neg", "pos"]
    assert card["prompts"]["example_rendered"].startswith("<|im_start|>system\n")
    assert card["prompts"]["example_rendered"].endswith("<|im_start|>assistant\n")
    assert "public" in card["seeds"]["note"]
    ids = [i for group in card["seeds"]["ids"].values() for i in group]
    assert len(ids) == 12 and set(ids) <= set(train.tolist())
    assert not set(ids) & set(data.central_test.tolist())
    assert (
        card["sampling"].items() >= {"temperature": 0.9, "top_p": 0.95, "max_new_tokens": 8}.items()
    )
    assert set(card["seconds"]) == {"load_model", "generate", "filter", "total"}
    assert card["central_test_split"]["test_size"] == cfg.data.test_size
    assert "neg" in report.table() and "seconds" in report.table()


def test_sampling_is_reproducible_with_a_seed(tmp_path):
    # Prepare: the real tiny-llama samples (random weights, seeded)
    sets = [*SYNTH, "synth.generate.per_class=3", "synth.generate.min_words=1"]
    sets += ["synth.generate.label_check=false"]
    # Execute
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        synthesize(load_config(None, [*sets, f"synth.generate.seed={seed}"]), tmp_path / name)
    # Assert: every candidate is in one of the two files, byte for byte the same
    files = {n: [(tmp_path / n / f).read_bytes() for f in (EXAMPLES, REJECTED)] for n in "abc"}
    assert files["a"] == files["b"]
    assert files["a"] != files["c"]
    a = json.loads((tmp_path / "a" / CARD).read_text())["seeds"]["ids"]
    c = json.loads((tmp_path / "c" / CARD).read_text())["seeds"]["ids"]
    assert a != c  # the seed draws the seed examples too


def test_a_task_that_is_not_text_classification_is_refused(tmp_path):
    from fedfm.errors import ConfigError
    from tests.helpers import toy_config

    with pytest.raises(ConfigError, match="text_classification"):
        synthesize(toy_config(), tmp_path)
