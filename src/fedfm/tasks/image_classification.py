"""Image classification: EfficientNet-Lite0 (ImageNet weights) or a tiny CNN on greyscale sets.

Images stay uint8 in memory; each batch is converted to float, resized to `image_size` with
bilinear interpolation, repeated to 3 channels and normalised with ImageNet's mean and
standard deviation (what the packaged weights were trained on). BatchNorm is frozen at build
time (see `fedfm.models.vision`).

LoRA (PEFT 0.21, `LoraConfig` on the plain module, the head `_fc` in `modules_to_save`), as
measured on EfficientNet-Lite0:

- the 1x1 convolutions `_expand_conv`, `_project_conv`, `_conv_head` work once the build has
  turned them into plain `torch.nn.Conv2d` (PEFT builds LoRA's convolutions by calling the
  base layer's class, which the package's padded conv class refuses); they are the default
  targets (r=8: 182,272 LoRA parameters + the 12,810 of a 10-way head);
- the classifier `_fc` is trained whole as a module to save; naming it as a target as well is
  ignored beside other targets and refused alone (`NoMatchingPeftModuleError`);
- the stem `_conv_stem` fails (the package's padded conv class again; and LoRA's path would
  skip its "same" padding); the depthwise `_depthwise_conv` are refused by PEFT (grouped
  convolutions need a rank divisible by the groups).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from torch.nn import functional as F

from fedfm.data.images import ImageExamples, read_images
from fedfm.models.vision import HEAD_PREFIXES, POINTWISE_CONVS, build_vision_model
from fedfm.tasks.base import Batch, Examples
from fedfm.tasks.classify import ClassifierMixin
from fedfm.tasks.configs import ImageClassificationConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ImageClassification(ClassifierMixin):
    """Classification of a packaged greyscale image set with a vision model of the catalogue.

    Args:
        cfg: the task's config section (model, dataset, image size, pretrained).
        max_examples: keep a seeded random subset of this size.
        seed: seed of that subset.
    """

    cfg: ImageClassificationConfig
    max_examples: int | None = None
    seed: int = 0

    name = "image_classification"
    primary_metric = "accuracy"
    peft_task_type: str | None = None
    head_prefixes: tuple[str, ...] = HEAD_PREFIXES
    default_target_modules: tuple[str, ...] = POINTWISE_CONVS

    def load_examples(self) -> ImageExamples:
        """The image set as uint8 [n, 28, 28] images and int64 labels."""
        return read_images(self.cfg.dataset, self.max_examples, self.seed)

    def build_model(self, examples: Examples) -> torch.nn.Module:
        """The catalogue model with a fresh head and frozen BatchNorm (`tiny-cnn` is random)."""
        return build_vision_model(
            self.cfg.model, _images(examples).num_classes, self.cfg.image_size, self.cfg.pretrained
        )

    def batches(
        self,
        examples: Examples,
        indices: np.ndarray,
        batch_size: int,
        rng: np.random.Generator | None,
    ) -> Iterator[Batch]:
        """Shuffled batches (`rng=None`: in index order) of normalised 3-channel images."""
        from fedfm.data.batching import shuffled_slices

        data = _images(examples)
        for idx in shuffled_slices(indices, batch_size, rng):
            yield {
                "images": to_model_input(torch.from_numpy(data.images[idx]), self.cfg.image_size),
                "labels": torch.from_numpy(data.labels[idx]),
            }

    def logits(self, module: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """[batch, num_classes] logits."""
        out: torch.Tensor = module(batch["images"])
        return out


def to_model_input(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [b, h, w] greyscale -> float32 [b, 3, size, size], ImageNet-normalised.

    The result is laid out channels-last: convolutions then run in that layout (measured on
    2 CPU cores: EfficientNet-Lite0 steps about 1.5x faster at 32-64 pixels).
    """
    x = images.to(torch.float32).div_(255.0).unsqueeze(1)  # [b, 1, h, w] in [0, 1]
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = (x.expand(-1, 3, -1, -1) - mean) / std  # grey repeated on R, G, B
    return x.contiguous(memory_format=torch.channels_last)


def _images(examples: Examples) -> ImageExamples:
    return cast(ImageExamples, examples)
