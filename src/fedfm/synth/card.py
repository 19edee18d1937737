"""A synthetic dataset on disk: `examples.jsonl`, `rejected.jsonl` and `data_card.json`.

Each file is written atomically (a temporary file, fsync, rename); the card goes last and
names the SHA-256 of the examples, so a directory with a card is complete, and a changed
examples file is refused on reading. json only at import time: a run's config reads these.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fedfm.errors import ConfigError

EXAMPLES = "examples.jsonl"  # the kept examples: text, label, label_name, prompt_id
REJECTED = "rejected.jsonl"  # the filtered-out candidates, each with its reason
CARD = "data_card.json"  # model, prompts, seeds, sampling, counts, seconds


@dataclass(frozen=True)
class SyntheticExample:
    """One generated example.

    Attributes:
        text: the cleaned generated text.
        label: the intended class id.
        label_name: that class's name in the task's dataset.
        prompt_id: which prompt variant produced it (`<label_name>-<k>`).
    """

    text: str
    label: int
    label_name: str
    prompt_id: str


@dataclass(frozen=True)
class SyntheticSet:
    """A directory written by `fedfm synth`, read back.

    Attributes:
        examples: the kept examples, in file order.
        card: the data card.
        sha256: digest of `examples.jsonl`.
    """

    examples: list[SyntheticExample]
    card: dict[str, Any]
    sha256: str

    @property
    def dataset(self) -> str:
        """The dataset whose classes the examples carry."""
        return str(self.card.get("dataset"))

    @property
    def label_names(self) -> tuple[str, ...]:
        """The class names, index = class id."""
        return tuple(self.card.get("label_names", ()))

    def per_class(self) -> dict[str, int]:
        """Kept examples per class name (every class of the card, zeros included)."""
        counts = Counter(e.label_name for e in self.examples)
        return {name: counts.get(name, 0) for name in self.label_names}


def write_synthetic(
    out: Path,
    kept: Sequence[SyntheticExample],
    rejected: Sequence[tuple[SyntheticExample, str]],
    card: dict[str, Any],
) -> Path:
    """Write the three files into `out` (created if needed); the card last.

    Args:
        out: the directory.
        kept: the examples that passed every filter.
        rejected: the others, each with the reason it was rejected.
        card: the data card; `files` (rows and SHA-256 of each file) is added here.

    Returns:
        The card's path.
    """
    from fedfm.checkpoint import atomic_write_bytes

    out.mkdir(parents=True, exist_ok=True)
    body = _jsonl(asdict(e) for e in kept)
    gone = _jsonl({**asdict(e), "reason": why} for e, why in rejected)
    atomic_write_bytes(out / EXAMPLES, body)
    atomic_write_bytes(out / REJECTED, gone)
    files = {
        EXAMPLES: {"rows": len(kept), "sha256": hashlib.sha256(body).hexdigest()},
        REJECTED: {"rows": len(rejected), "sha256": hashlib.sha256(gone).hexdigest()},
    }
    path = out / CARD
    atomic_write_bytes(path, json.dumps({**card, "files": files}, indent=1).encode())
    return path


def read_synthetic(path: str | Path, field: str = "synth.path") -> SyntheticSet:
    """Read and check a directory written by `fedfm synth`.

    Args:
        path: the directory.
        field: the config field to name in errors.

    Raises:
        ConfigError: a missing directory or file, a malformed card or row, a label the card
            does not list, or an examples file that is not the one the card describes.
    """
    folder = Path(path)
    for name in (EXAMPLES, CARD):
        if not (folder / name).is_file():
            raise ConfigError(f"{field}: {folder} has no {name} (write one with fedfm synth)")
    raw = (folder / EXAMPLES).read_bytes()
    try:
        card = json.loads((folder / CARD).read_text())
        labels = list(card["label_names"])
        want = card["files"][EXAMPLES]["sha256"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{field}: {folder / CARD} is malformed ({exc!r})") from None
    digest = hashlib.sha256(raw).hexdigest()
    if digest != want:
        raise ConfigError(f"{field}: {folder / EXAMPLES} differs from the one its card describes")
    examples = []
    for n, line in enumerate(raw.decode().splitlines(), start=1):
        try:
            row = json.loads(line)
            ex = SyntheticExample(
                str(row["text"]), int(row["label"]), str(row["label_name"]), str(row["prompt_id"])
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{field}: {EXAMPLES} line {n} is malformed ({exc!r})") from None
        if not 0 <= ex.label < len(labels) or labels[ex.label] != ex.label_name:
            raise ConfigError(
                f"{field}: {EXAMPLES} line {n}: label {ex.label} ({ex.label_name!r}) is not "
                f"one of the card's labels {labels}"
            )
        examples.append(ex)
    return SyntheticSet(examples, card, digest)


def _jsonl(rows: Any) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
