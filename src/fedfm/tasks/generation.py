"""Generation with transformers' `generate`: batched by prompt length, left-padded, with a KV
cache, stopped at EOS or a max-new-tokens cap; greedy (evaluation, `fedfm generate`) or
seeded nucleus sampling (`fedfm synth`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Sampling:
    """Nucleus sampling (Holtzman et al. 2019, https://arxiv.org/abs/1904.09751).

    Attributes:
        temperature: softmax temperature (> 0).
        top_p: keep the smallest set of tokens whose probability reaches this (0 < p <= 1).
        seed: with the batch's index, seeds torch's generator for that batch (forked, so
            the caller's random state is untouched).
    """

    temperature: float
    top_p: float
    seed: int


def generate(
    module: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[np.ndarray],
    batch_size: int,
    max_new_tokens: int,
    sampling: Sampling | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """Decoded new text for tokenised prompts, batched by length with left padding.

    Args:
        module: a causal LM.
        tokenizer: its tokenizer (pad and EOS ids, decoding).
        prompts: token ids of each prompt.
        batch_size: prompts per `generate` call.
        max_new_tokens: cap on new tokens per prompt.
        sampling: `None` for greedy decoding, else nucleus sampling seeded per batch.
        on_batch: called with the number of prompts after each batch (a progress bar).

    Returns:
        One decoded string per prompt, in the order given, without special tokens.
    """
    order = np.argsort([len(p) for p in prompts], kind="stable")
    out: list[str] = [""] * len(prompts)
    pad = int(tokenizer.pad_token_id)
    module.eval()
    with torch.inference_mode():
        for b, start in enumerate(range(0, len(order), batch_size)):
            rows = order[start : start + batch_size]
            width = max(len(prompts[r]) for r in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for k, r in enumerate(rows):  # left padding: every prompt ends at the last column
                ids[k, width - len(prompts[r]) :] = torch.from_numpy(prompts[r])
                mask[k, width - len(prompts[r]) :] = 1
            eos = int(tokenizer.eos_token_id)
            if sampling is None:
                new = new_tokens(module, ids, mask, max_new_tokens, eos, pad)
            else:
                seed = int(np.random.default_rng([sampling.seed, b]).integers(2**62))
                new = new_tokens(module, ids, mask, max_new_tokens, eos, pad, sampling, seed)
            for k, r in enumerate(rows):
                out[r] = tokenizer.decode(new[k], skip_special_tokens=True)
            if on_batch is not None:
                on_batch(len(rows))
    return out


def new_tokens(
    module: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    sampling: Sampling | None = None,
    seed: int = 0,
    streamer: Any = None,
) -> list[list[int]]:
    """transformers' `generate` (the one call of it); returns each row's new tokens up to EOS.

    Args:
        module: a causal LM.
        input_ids: [batch, width] left-padded prompts.
        attention_mask: [batch, width] 1 on prompt tokens.
        max_new_tokens: cap on new tokens.
        eos_id: the end-of-sequence id (stops a row; not returned).
        pad_id: the padding id.
        sampling: `None` for greedy decoding; else temperature and top-p (no top-k).
        seed: seeds torch's generator under a fork when sampling.
        streamer: transformers' `put`/`end` protocol, sees tokens as they are generated.
    """
    import contextlib
    import warnings

    kwargs: dict[str, Any] = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "max_new_tokens": max_new_tokens,
        "num_beams": 1,
        "use_cache": True,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "streamer": streamer,
    }
    if sampling is None:  # the checkpoint's sampling defaults do not apply
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
        kwargs.update(top_k=0)  # nucleus sampling alone
    forked = contextlib.nullcontext() if sampling is None else torch.random.fork_rng(devices=[])
    with warnings.catch_warnings(), forked:
        warnings.simplefilter("ignore")
        if sampling is not None:
            torch.manual_seed(seed)
        generated = cast(Any, module).generate(**kwargs)
    new = generated[:, input_ids.shape[1] :].tolist()
    return [row[: row.index(eos_id)] if eos_id in row else row for row in new]


def greedy(
    module: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    streamer: Any = None,
) -> list[list[int]]:
    """`new_tokens` without sampling (`fedfm generate`'s streamed answers)."""
    return new_tokens(
        module, input_ids, attention_mask, max_new_tokens, eos_id, pad_id, streamer=streamer
    )
