"""Sampling candidate examples from a causal LM, with a progress bar.

The generator is a catalogue causal LM (`smollm2-135m`; `tiny-llama` in tests). Generation
is `fedfm.tasks.generation.generate` with seeded nucleus sampling: left-padded batches grouped
by prompt length, a KV cache, `torch.inference_mode`, EOS or a new-token cap. The same
config and seed give the same candidates (on the same machine and thread count).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from fedfm.synth.prompts import Prompt

if TYPE_CHECKING:
    from rich.console import Console

    from fedfm.synth.config import SynthGenerateConfig


@dataclass(frozen=True)
class Candidate:
    """One raw generated turn.

    Attributes:
        text: the decoded new text (before cleaning).
        label: the class it was asked for.
        prompt_id: the prompt variant that produced it.
    """

    text: str
    label: int
    prompt_id: str


def load_generator(name: str, seed: int) -> tuple[torch.nn.Module, Any]:
    """The causal LM and its chat tokenizer (a random model is seeded by `seed`)."""
    from fedfm.models.causal_lm import build_causal_lm, load_causal_tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_causal_lm(name)
    return model, load_causal_tokenizer(name)


def schedule(prompts: Sequence[Prompt], per_class: int) -> list[Prompt]:
    """`per_class` prompts per class: candidate j of a class uses that class's variant j mod k."""
    by_class: dict[int, list[Prompt]] = {}
    for p in prompts:
        by_class.setdefault(p.label, []).append(p)
    return [
        variants[j % len(variants)]
        for _, variants in sorted(by_class.items())
        for j in range(per_class)
    ]


def sample_candidates(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    g: SynthGenerateConfig,
    console: Console | None = None,
) -> list[Candidate]:
    """`g.per_class` sampled candidates per class, in class order.

    Args:
        model: the causal LM.
        tokenizer: its tokenizer.
        prompts: the prompt variants of every class.
        g: sampling settings (per_class, temperature, top_p, max_new_tokens, batch_size, seed).
        console: draw a progress bar there (`None`: no bar).
    """
    from fedfm.tasks.generation import Sampling, generate

    plan = schedule(prompts, g.per_class)
    sampling = Sampling(g.temperature, g.top_p, g.seed)
    ids = [p.ids for p in plan]
    if console is None:
        texts = generate(model, tokenizer, ids, g.batch_size, g.max_new_tokens, sampling)
    else:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=console) as bar:
            task = bar.add_task("generating", total=len(plan))
            texts = generate(
                model,
                tokenizer,
                ids,
                g.batch_size,
                g.max_new_tokens,
                sampling,
                on_batch=lambda n: bar.advance(task, n),
            )
    return [Candidate(t, p.label, p.prompt_id) for t, p in zip(texts, plan, strict=True)]
