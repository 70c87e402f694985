"""The idx reader behind Fashion-MNIST, on small idx files written here (the real set is not needed)."""

import gzip
import struct

import numpy as np
import pytest

from marforge.errors import DataError
from marforge.train import datasets


def write_idx(path, array, magic):
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


@pytest.fixture
def fashion_dir(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6), ("t10k", 3)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)), datasets.IDX_IMAGES_MAGIC)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10, datasets.IDX_LABELS_MAGIC)
    monkeypatch.setenv(datasets.FASHION_DIR_ENV, str(tmp_path))
    return tmp_path


def test_reads_idx_files_from_the_configured_folder(fashion_dir):
    data = datasets.load("fashion-mnist")
    assert data.train_images.shape == (6, 28, 28) and data.test_images.shape == (3, 28, 28)
    assert data.train_labels.tolist() == [0, 1, 2, 3, 4, 5]
    assert data.labels[9] == "Ankle boot" and str(fashion_dir) in data.source


def test_a_missing_file_names_the_package_to_install(fashion_dir):
    (fashion_dir / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: Fashion-MNIST file not found") as caught:
        datasets.load("fashion-mnist")
    assert "apt-get install dataset-fashion-mnist" in caught.value.hint


def test_a_truncated_file_is_refused(fashion_dir):
    path = fashion_dir / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-10]))
    with pytest.raises(DataError, match="header says shape"):
        datasets.load("fashion-mnist")


def test_unknown_dataset_names_the_known_ones():
    with pytest.raises(DataError, match="known: fashion-mnist, sklearn-digits"):
        datasets.load("imagenet")
