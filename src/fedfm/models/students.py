"""Small students for `fedfm distill`: a 2-layer BERT for text, a small CNN for images.

Each task has its own registry of student sizes and a default (`STUDENTS_BY_TASK`,
`DEFAULT_STUDENT`, keyed by task name). A CNN student is saved as `model.safetensors` plus
`student.json` (its config; no pickle anywhere); a BERT student in transformers' own format.
`load_student` reads either back.

The CNN uses ordinary, trainable `BatchNorm2d`: a student is trained centrally by
`fedfm distill`, in one process, so the reason the federated vision models freeze theirs (one
module shared by simulated clients, statistics that never travel; see `fedfm.models.vision`)
does not apply. Its running statistics are saved beside the weights.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from fedfm.errors import CheckpointError, ConfigError

# (hidden size, attention heads, feed-forward size) of each 2-layer BERT student
BERT_STUDENTS: dict[str, tuple[int, int, int]] = {
    "tiny": (32, 2, 64),
    "bert-2layer": (128, 2, 512),
}
CNN_CONFIG = "student.json"  # a CNN student's config, beside its weights
CNN_WEIGHTS = "model.safetensors"


@dataclass(frozen=True)
class CNNStudentConfig:
    """The shape of a CNN student.

    Attributes:
        channels: output channels of each block (3x3 conv, BatchNorm, ReLU, 2x2 max-pool).
        pool: side of the adaptive average pool before the linear head (1: global pool).
        num_classes: outputs of the head.
        in_channels: input channels (3: the teacher's input, grey repeated on R, G, B).
    """

    channels: tuple[int, ...]
    pool: int = 1
    num_classes: int = 10
    in_channels: int = 3


CNN_STUDENTS: dict[str, CNNStudentConfig] = {
    "cnn-tiny": CNNStudentConfig(channels=(8, 16), pool=2),  # for tests: 2,066 parameters
    "cnn-small": CNNStudentConfig(channels=(16, 32, 64), pool=2),  # 26,266 (10 classes)
}
STUDENTS_BY_TASK: dict[str, tuple[str, ...]] = {
    "text_classification": tuple(BERT_STUDENTS),
    "image_classification": tuple(CNN_STUDENTS),
}
DEFAULT_STUDENT: dict[str, str] = {
    "text_classification": "bert-2layer",
    "image_classification": "cnn-small",
}


def check_student_name(name: str) -> None:
    """Refuse a name that no task's registry holds (before any run is read).

    Raises:
        ConfigError: naming every task's allowed values.
    """
    if not any(name in names for names in STUDENTS_BY_TASK.values()):
        allowed = "; ".join(f"{', '.join(v)} ({k})" for k, v in STUDENTS_BY_TASK.items())
        raise ConfigError(f"--student: {name!r} is not one of {allowed}")


def student_for(task_name: str, name: str | None) -> str:
    """The student for a run of `task_name`: `name`, or the task's default when `None`.

    Raises:
        ConfigError: the task has no students, or `name` is not one of the task's.
    """
    if task_name not in STUDENTS_BY_TASK:
        raise ConfigError(
            f"fedfm distill needs a {' or '.join(map(repr, STUDENTS_BY_TASK))} run; "
            f"this run's task is {task_name!r}"
        )
    allowed = STUDENTS_BY_TASK[task_name]
    if name is None:
        return DEFAULT_STUDENT[task_name]
    if name not in allowed:
        raise ConfigError(
            f"--student: {name!r} does not fit a {task_name} run; allowed: {', '.join(allowed)}"
        )
    return name


def build_bert_student(
    name: str, vocab_size: int, num_labels: int, max_length: int, seed: int
) -> Any:
    """A randomly initialised 2-layer BERT with mean pooling (the teacher's vocabulary).

    Raises:
        ConfigError: unknown student name.
    """
    if name not in BERT_STUDENTS:
        raise ConfigError(f"--student: {name!r} is not one of {', '.join(BERT_STUDENTS)}")
    from transformers import BertConfig

    from fedfm.models.classifier import MeanPoolClassifier

    hidden, heads, ffn = BERT_STUDENTS[name]
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=heads,
        intermediate_size=ffn,
        max_position_embeddings=max(128, max_length),
    )
    config.num_labels = num_labels
    torch.manual_seed(seed)
    return MeanPoolClassifier(config)


class CNNStudent(torch.nn.Module):
    """Conv blocks (3x3 conv, BatchNorm, ReLU, 2x2 max-pool), adaptive average pool, linear.

    Args:
        config: channels per block, pool side, classes, input channels.
    """

    def __init__(self, config: CNNStudentConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[torch.nn.Module] = []
        c_in = config.in_channels
        for c in config.channels:
            layers += [
                torch.nn.Conv2d(c_in, c, 3, padding=1, bias=False),  # BatchNorm adds the bias
                torch.nn.BatchNorm2d(c),
                torch.nn.ReLU(inplace=True),
                torch.nn.MaxPool2d(2),
            ]
            c_in = c
        self.features = torch.nn.Sequential(*layers)
        self.pool = torch.nn.AdaptiveAvgPool2d(config.pool)
        self.head = torch.nn.Linear(c_in * config.pool**2, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[batch, in_channels, H, W] -> [batch, num_classes] logits."""
        h = self.pool(self.features(x))  # [batch, C, pool, pool]
        out: torch.Tensor = self.head(h.flatten(1))  # [batch, C * pool * pool]
        return out


def build_cnn_student(name: str, num_classes: int, seed: int) -> CNNStudent:
    """A CNN student of the registry, initialised from `seed` (the global RNG is untouched).

    Raises:
        ConfigError: unknown student name.
    """
    if name not in CNN_STUDENTS:
        raise ConfigError(f"--student: {name!r} is not one of {', '.join(CNN_STUDENTS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CNNStudent(replace(CNN_STUDENTS[name], num_classes=num_classes))


def save_student(module: torch.nn.Module, folder: Path) -> Path:
    """Write a student to `folder` (created): a CNN as safetensors + `student.json`, a BERT
    student in transformers' format. Returns `folder`."""
    from fedfm.checkpoint import atomic_write_bytes
    from fedfm.state import to_bytes

    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(module, CNNStudent):
        atomic_write_bytes(folder / CNN_WEIGHTS, to_bytes(module.state_dict()))
        config = {"kind": "cnn", **asdict(module.config)}
        atomic_write_bytes(folder / CNN_CONFIG, json.dumps(config, indent=1).encode())
        return folder
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one small shard: the bar is noise
    try:
        module.save_pretrained(str(folder))  # type: ignore[operator]
    finally:
        hf_logging.enable_progress_bar()
    return folder


def load_student(folder: Path) -> torch.nn.Module:
    """A student written by `save_student`, in eval mode.

    Raises:
        CheckpointError: `folder` holds no student, or its files do not fit together.
    """
    if (folder / CNN_CONFIG).exists():
        from safetensors.torch import load_file

        try:
            raw = json.loads((folder / CNN_CONFIG).read_text())
            if raw.pop("kind", None) != "cnn":
                raise ValueError("kind is not 'cnn'")
            raw["channels"] = tuple(raw["channels"])
            module: torch.nn.Module = CNNStudent(CNNStudentConfig(**raw))
            module.load_state_dict(load_file(str(folder / CNN_WEIGHTS)), strict=True)
        except (OSError, ValueError, TypeError, KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{folder}: not a readable CNN student: {exc}") from None
    elif (folder / "config.json").exists():
        from fedfm.models.classifier import MeanPoolClassifier

        module = MeanPoolClassifier.from_pretrained(str(folder))
    else:
        raise CheckpointError(f"{folder} holds no student ({CNN_CONFIG} or config.json)")
    return module.eval()
