"""The `[synth]` config section: how `fedfm synth` generates, and the two uses in a run.

```toml
[synth]
path = "synth/rt"       # a directory written by `fedfm synth` (examples.jsonl, data_card.json)
warmup_steps = 50       # server-side warm-up of the initial model on it (GPT-FL)
fill_missing = 20       # per client: this many examples of each class it lacks (train only)

[synth.generate]        # `fedfm synth`'s settings (ignored by runs)
per_class = 100
temperature = 0.9
```

Both uses are off by default, and a run without them is the run it was before. pydantic and
json only: loading a config must stay cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from fedfm.configbase import Section
from fedfm.errors import ConfigError

if TYPE_CHECKING:
    from fedfm.config import Config


class SynthGenerateConfig(Section):
    """`[synth.generate]`: what `fedfm synth` generates and how it filters."""

    model: Literal["smollm2-135m", "tiny-llama"] = "smollm2-135m"
    per_class: int = Field(100, ge=1)  # candidates generated per class (before filtering)
    seeds_per_class: int = Field(6, ge=1, le=32)  # public seed examples shown in the prompts
    prompts_per_class: int = Field(4, ge=1, le=64)  # prompt variants (seed order, wording)
    temperature: float = Field(0.9, gt=0, le=5)
    top_p: float = Field(0.95, gt=0, le=1)
    max_new_tokens: int = Field(48, ge=4, le=512)
    batch_size: int = Field(8, ge=1)
    min_words: int = Field(4, ge=1)
    max_words: int = Field(60, ge=1)
    near_duplicate: float = Field(0.7, gt=0, le=1)  # Jaccard of word shingles: at or above
    shingle: int = Field(3, ge=1, le=10)  # words per shingle
    overlap_ngram: int = Field(6, ge=2, le=20)  # words per n-gram of the overlap checks
    overlap: float = Field(0.5, gt=0, le=1)  # share of a text's n-grams found: at or above
    label_check: bool = True  # the prototype classifier must agree with the intended label
    seed: int = 0


class SynthConfig(Section):
    """`[synth]`: synthetic examples from `fedfm synth` in a run (off by default)."""

    path: str | None = None
    warmup_steps: int = Field(0, ge=0)
    warmup_lr: float | None = Field(None, gt=0)  # None: client.lr
    fill_missing: int = Field(0, ge=0)
    generate: SynthGenerateConfig = Field(default_factory=SynthGenerateConfig)


def check_synth(cfg: Config) -> None:
    """Refuse a `[synth]` section a run cannot use, in one line naming the field.

    Raises:
        ConfigError: a use without a path, a path without a use, a task that is not text
            classification, a directory without `fedfm synth`'s files, examples of another
            dataset or with labels the card does not list, or more examples asked per class
            than the directory keeps.
    """
    s, g = cfg.synth, cfg.synth.generate
    if g.min_words > g.max_words:
        raise ConfigError(
            f"synth.generate.min_words={g.min_words} must not exceed max_words={g.max_words}"
        )
    uses = [f"synth.{k}" for k in ("warmup_steps", "fill_missing") if getattr(s, k) > 0]
    if s.path is None:
        if uses:
            raise ConfigError(f"{uses[0]} needs synth.path (a directory written by fedfm synth)")
        return
    if not uses:
        raise ConfigError(
            "synth.path is set but unused: set synth.warmup_steps and/or synth.fill_missing"
        )
    from fedfm.synth.card import read_synthetic
    from fedfm.tasks.configs import TextClassificationConfig

    if not isinstance(cfg.task, TextClassificationConfig):
        raise ConfigError(
            f"synth.path needs task.name='text_classification' (got {cfg.task.name!r})"
        )
    synthetic = read_synthetic(s.path)
    if synthetic.dataset != cfg.task.dataset:
        raise ConfigError(
            f"synth.path: the examples were made for dataset {synthetic.dataset!r}, "
            f"task.dataset is {cfg.task.dataset!r}"
        )
    if s.fill_missing > 0:
        counts = synthetic.per_class()
        short = [n for n, k in counts.items() if k < s.fill_missing]
        if short:
            raise ConfigError(
                f"synth.fill_missing={s.fill_missing} exceeds the {counts[short[0]]} examples "
                f"of class {short[0]!r} in synth.path"
            )
    if s.warmup_steps > 0 and not synthetic.examples:
        raise ConfigError("synth.warmup_steps: synth.path holds no examples")
