"""Greedy generation with transformers' `generate`: batched by prompt length, left-padded,
with a KV cache, stopped at EOS or a max-new-tokens cap (evaluation, `fedfm generate`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def generate(
    module: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[np.ndarray],
    batch_size: int,
    max_new_tokens: int,
) -> list[str]:
    """Greedy generation for tokenised prompts, batched by length with left padding."""
    order = np.argsort([len(p) for p in prompts], kind="stable")
    out: list[str] = [""] * len(prompts)
    pad = int(tokenizer.pad_token_id)
    module.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            width = max(len(prompts[r]) for r in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for k, r in enumerate(rows):  # left padding: every prompt ends at the last column
                ids[k, width - len(prompts[r]) :] = torch.from_numpy(prompts[r])
                mask[k, width - len(prompts[r]) :] = 1
            new = greedy(module, ids, mask, max_new_tokens, int(tokenizer.eos_token_id), pad)
            for k, r in enumerate(rows):
                out[r] = tokenizer.decode(new[k], skip_special_tokens=True)
    return out


def greedy(
    module: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    streamer: Any = None,
) -> list[list[int]]:
    """transformers' `generate` without sampling; returns each row's new tokens up to EOS.

    `streamer` (transformers' `put`/`end` protocol) sees tokens as they are generated.
    """
    import warnings

    kwargs: dict[str, Any] = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "max_new_tokens": max_new_tokens,
        "do_sample": False,
        "num_beams": 1,
        "use_cache": True,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "streamer": streamer,
    }
    with warnings.catch_warnings():  # the checkpoint's sampling defaults do not apply
        warnings.simplefilter("ignore")
        generated = cast(Any, module).generate(**kwargs, temperature=None, top_p=None, top_k=None)
    new = generated[:, input_ids.shape[1] :].tolist()
    return [row[: row.index(eos_id)] if eos_id in row else row for row in new]
