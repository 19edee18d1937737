"""Few-shot prompts for generating labelled examples, and the cleaning of what comes back.

Each prompt is a chat in the model's own template: a system line, then every seed example
of the class as an earlier turn (the user asks for a review, the assistant "wrote" the seed),
then the same request once more; the model's next turn is one new example. Small instruct
models copy the form of earlier assistant turns far better than they follow a list of
examples inside one message (checked by hand on SmolLM2-135M-Instruct: fewer preambles such
as "Here's a new review:"). Variants differ in the order of the seeds and in the wording
of the request.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Domain:
    """How to ask for examples of one dataset.

    Attributes:
        system: the system message.
        requests: request wordings with a `{label}` slot, one per variant (cycled).
        label_words: class name -> the word put in the slot (default: the name itself).
    """

    system: str
    requests: tuple[str, ...]
    label_words: dict[str, str] = field(default_factory=dict)

    def word(self, label_name: str) -> str:
        """The word for a class in a request."""
        return self.label_words.get(label_name, label_name)


DOMAINS: dict[str, Domain] = {
    "rotten_tomatoes": Domain(
        "You are a film critic. You write one short movie review at a time.",
        (
            "Write a short {label} review of a movie.",
            "Write a {label} one-sentence review of a film.",
            "Give your short {label} verdict on a movie you saw.",
            "Write a brief {label} review of a new film.",
        ),
        {"rotten": "negative", "fresh": "positive"},
    ),
    "debates": Domain(
        "You write one short statement at a time, as said in a 2016 US presidential debate.",
        (
            "Write a short debate statement by a {label} candidate.",
            "Write one thing a {label} candidate might say in a presidential debate.",
        ),
    ),
}
GENERIC = Domain(
    "You write one short example text at a time.", ("Write a short text of class {label}.",)
)


@dataclass(frozen=True)
class Prompt:
    """One prompt variant for one class.

    Attributes:
        prompt_id: `<label_name>-<k>`.
        label: the class id.
        messages: the chat, ending with the user's request.
        ids: the prompt's token ids (chat template, generation prompt added).
    """

    prompt_id: str
    label: int
    messages: list[dict[str, str]]
    ids: np.ndarray


def choose_seeds(
    labels: np.ndarray, pool: np.ndarray, per_class: int, seed: int
) -> dict[int, np.ndarray]:
    """`per_class` example indices of each class from `pool`, drawn with a fixed seed.

    Args:
        labels: [n] class ids of the whole dataset.
        pool: indices the seeds may come from (the clients' training examples).
        per_class: seeds per class (fewer if a class has fewer examples).
        seed: the generator's seed.

    Returns:
        class id -> sorted indices.
    """
    rng = np.random.default_rng([seed, 0x5EED])
    out = {}
    for c in np.unique(labels):
        members = pool[labels[pool] == c]
        take = min(per_class, len(members))
        out[int(c)] = np.sort(rng.choice(members, take, replace=False))
    return out


def build_prompts(
    domain: Domain,
    label_names: Sequence[str],
    seed_texts: dict[int, list[str]],
    variants: int,
    tokenizer: object,
    seed: int,
) -> list[Prompt]:
    """`variants` prompts per class: the seeds as earlier turns, in a seeded order.

    Args:
        domain: the system message and request wordings.
        label_names: class names, index = class id.
        seed_texts: class id -> the texts of its seed examples.
        variants: prompts per class.
        tokenizer: a chat tokenizer (`apply_chat_template`).
        seed: seeds the order of the seeds in each variant.
    """
    prompts = []
    for c, texts in sorted(seed_texts.items()):
        name = label_names[c]
        for k in range(variants):
            order = np.random.default_rng([seed, c, k]).permutation(len(texts))
            request = domain.requests[k % len(domain.requests)].format(label=domain.word(name))
            messages = [{"role": "system", "content": domain.system}]
            for j in order:
                messages.append({"role": "user", "content": request})
                messages.append({"role": "assistant", "content": texts[j].strip()})
            messages.append({"role": "user", "content": request})
            ids = tokenizer.apply_chat_template(  # type: ignore[attr-defined]
                messages, add_generation_prompt=True, return_dict=False
            )
            prompts.append(Prompt(f"{name}-{k}", c, messages, np.asarray(ids, dtype=np.int64)))
    return prompts


_PREFIX = re.compile(r"^(?:[-*•]\s*|\d+[.)]\s*|(?:review|statement|text)\s*:\s*)+", re.I)
_QUOTES = "\"'“”‘’"


def clean(text: str) -> str:
    """The example inside a generated turn.

    Drops a preamble line ending in a colon ("Here's a new review:"), keeps the first
    paragraph, strips list markers, a "Review:" label and enclosing quotes, and cuts a text
    stopped mid-sentence by the token cap back to its last full sentence, if it has one.
    """
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        lines = lines[1:]
    if not lines:
        return ""
    out = _PREFIX.sub("", lines[0]).strip()
    if len(out) > 1 and out[0] in _QUOTES and out[-1] in _QUOTES:
        out = out[1:-1].strip()
    if out and out[-1] not in ".!?" + _QUOTES:
        cut = max(out.rfind(p) for p in ".!?")
        if cut > 0:
            out = out[: cut + 1]
    return out
