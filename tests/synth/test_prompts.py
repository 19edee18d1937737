"""Seeds, few-shot chat prompts, and the cleaning of generated turns."""

import numpy as np
import pytest

from fedfm.synth.prompts import DOMAINS, GENERIC, build_prompts, choose_seeds, clean


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("  A fine film.  ", "A fine film."),
        ("Here's a new negative review:\n\nA dull, lifeless film.", "A dull, lifeless film."),
        ('"A dull, lifeless film."', "A dull, lifeless film."),
        ("Review: A dull film.\nSecond paragraph.", "A dull film."),
        ("1. A dull film!", "A dull film!"),
        ("A dull film. It drags on and on and on and", "A dull film."),
        ("no sentence end at all", "no sentence end at all"),
        ("\n \n", ""),
    ],
)
def test_clean(raw, want):
    assert clean(raw) == want


def test_seeds_come_from_the_pool_only_with_a_fixed_seed():
    labels = np.array([0, 1] * 50)
    pool = np.arange(20, 100)
    a = choose_seeds(labels, pool, 4, seed=3)
    assert a.keys() == {0, 1}
    for c, idx in a.items():
        assert len(idx) == 4 and set(idx) <= set(pool) and (labels[idx] == c).all()
    assert all(np.array_equal(a[c], choose_seeds(labels, pool, 4, seed=3)[c]) for c in a)
    assert any(not np.array_equal(a[c], choose_seeds(labels, pool, 4, seed=4)[c]) for c in a)


def test_prompts_show_the_seeds_as_earlier_turns_in_the_chat_template():
    # Prepare
    from fedfm.models.causal_lm import load_causal_tokenizer

    tokenizer = load_causal_tokenizer("tiny-llama")
    seeds = {0: ["Dull.", "Awful film."], 1: ["Great fun.", "A gem."]}
    # Execute
    prompts = build_prompts(DOMAINS["rotten_tomatoes"], ("rotten", "fresh"), seeds, 3, tokenizer, 0)
    # Assert
    assert [p.prompt_id for p in prompts] == [
        f"{n}-{k}" for n in ("rotten", "fresh") for k in (0, 1, 2)
    ]
    first = prompts[0]
    text = tokenizer.decode(first.ids.tolist())
    assert text.startswith("<|im_start|>system\nYou are a film critic")
    assert text.endswith(
        "Write a short negative review of a movie.<|im_end|>\n<|im_start|>assistant\n"
    )
    answers = [m["content"] for m in first.messages if m["role"] == "assistant"]
    assert sorted(answers) == sorted(seeds[0])
    assert "positive" in prompts[4].messages[-1]["content"]  # fresh-1: the second wording
    assert GENERIC.word("neg") == "neg"
