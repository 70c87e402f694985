"""The training data sets, as 28x28 8-bit grayscale images: what `marforge train` trains and evaluates on.

Every loader returns a `Dataset` whose images are uint8 tensors (N x 28 x 28), exactly the pixels a
PIL mode "L" image of the same picture gives, so training sees what the serving handler sees; the
Dataset says that size and color, which training records as the weights' preprocessing.

- "fashion-mnist": Debian's `dataset-fashion-mnist` (gzipped idx files in
  /usr/share/datasets/fashion-mnist/, or in $MARFORGE_FASHION_MNIST_DIR); train = the 60,000
  train split, test = the 10,000 t10k split.
- "sklearn-digits": scikit-learn's 1,797 handwritten 8x8 digits (a training-only dependency),
  scaled to 0..255 and upsampled to 28x28 bilinearly; 20% of each class is held out as the test
  split, chosen with numpy's Generator seeded 0.
"""

import gzip
import os
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from marforge.errors import DataError

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_DIR_ENV = "MARFORGE_FASHION_MNIST_DIR"
FASHION_PACKAGE = "dataset-fashion-mnist"
FASHION_LABELS = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
DIGITS_LABELS = [str(d) for d in range(10)]
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
IMAGE_SIZE = (28, 28)

IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension


@dataclass(frozen=True)
class Dataset:
    """A train/test split of 28x28 uint8 images with int64 class indices into `labels`."""

    name: str
    source: str  # where the data came from, for the weights' provenance
    labels: list
    image_size: tuple  # (height, width) of every image
    color: str  # the contract's color mode: "grayscale" (one channel)
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def _fashion_missing(path):
    return DataError(
        f"{path}: Fashion-MNIST file not found",
        f"apt-get install {FASHION_PACKAGE}, or set {FASHION_DIR_ENV} to a folder holding the idx .gz files",
    )


def _read_idx(path, magic, dims):
    """The array in one gzipped idx file of unsigned bytes, after checking its magic and sizes."""
    try:
        data = gzip.decompress(Path(path).read_bytes())
    except FileNotFoundError:
        raise _fashion_missing(path) from None
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable gzip file: {exc}", f"reinstall {FASHION_PACKAGE}") from None
    header = 4 + 4 * dims
    if len(data) < header or struct.unpack(">I", data[:4])[0] != magic:
        raise DataError(f"{path}: not an idx file of {dims}-dimensional unsigned bytes (bad magic number)")
    shape = struct.unpack(f">{dims}I", data[4:header])
    if len(data) != header + int(np.prod(shape)):
        raise DataError(f"{path}: header says shape {shape} but holds {len(data) - header} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _fashion_split(folder, prefix):
    images = _read_idx(folder / f"{prefix}-images-idx3-ubyte.gz", IDX_IMAGES_MAGIC, 3)
    labels = _read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", IDX_LABELS_MAGIC, 1)
    if images.shape[1:] != IMAGE_SIZE or len(images) != len(labels) or labels.max() >= len(FASHION_LABELS):
        raise DataError(f"{folder}: {prefix} images {images.shape} do not match labels {labels.shape}")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def _package_version(package):
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True, text=True)
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def load_fashion_mnist():
    """Fashion-MNIST from the Debian package's idx files (or $MARFORGE_FASHION_MNIST_DIR)."""
    override = os.environ.get(FASHION_DIR_ENV)
    folder = Path(override or FASHION_DIR)
    train_images, train_labels = _fashion_split(folder, "train")
    test_images, test_labels = _fashion_split(folder, "t10k")
    if override:
        source = f"Fashion-MNIST idx files in {folder} (${FASHION_DIR_ENV})"
    else:
        version = _package_version(FASHION_PACKAGE)
        source = f"Debian package {FASHION_PACKAGE}" + (f" {version}" if version else "") + f", {folder}"
    return Dataset("fashion-mnist", source, list(FASHION_LABELS), IMAGE_SIZE, "grayscale",
                   train_images, train_labels, test_images, test_labels)


def _upsample_digit(image8):
    """One 8x8 digit (values 0..16) as the 28x28 uint8 picture a mode "L" bilinear resize gives."""
    from PIL import Image

    pixels = np.round(image8 * 255 / 16).astype(np.uint8)
    return np.asarray(Image.fromarray(pixels).resize(IMAGE_SIZE, Image.BILINEAR), dtype=np.uint8)


def _stratified_test_mask(targets):
    """True for the ~20% of each class held out as test, drawn with a seeded numpy Generator."""
    rng = np.random.default_rng(DIGITS_SPLIT_SEED)
    mask = np.zeros(len(targets), dtype=bool)
    for cls in range(len(DIGITS_LABELS)):
        members = np.flatnonzero(targets == cls)
        chosen = rng.permutation(members)[: round(len(members) * DIGITS_TEST_FRACTION)]
        mask[chosen] = True
    return mask


def load_sklearn_digits():
    """scikit-learn's handwritten digits, upsampled to 28x28, with a fixed stratified 80/20 split."""
    try:
        import sklearn
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError(
            "scikit-learn is not installed; it provides the sklearn-digits training data",
            ".venv/bin/pip install -r requirements-train.txt (make weights does)",
        ) from None
    digits = load_digits()
    images = np.stack([_upsample_digit(img) for img in digits.images])
    targets = digits.target.astype(np.int64)
    test = _stratified_test_mask(targets)
    source = f"scikit-learn {sklearn.__version__} sklearn.datasets.load_digits (8x8, upsampled bilinearly to 28x28)"
    return Dataset(
        "sklearn-digits", source, list(DIGITS_LABELS), IMAGE_SIZE, "grayscale",
        torch.from_numpy(images[~test]), torch.from_numpy(targets[~test]),
        torch.from_numpy(images[test]), torch.from_numpy(targets[test]),
    )


LOADERS = {"fashion-mnist": load_fashion_mnist, "sklearn-digits": load_sklearn_digits}


def load(dataset_name):
    """The Dataset called dataset_name (one of LOADERS)."""
    loader = LOADERS.get(dataset_name)
    if loader is None:
        raise DataError(
            f"unknown dataset {dataset_name!r} (known: {', '.join(LOADERS)})",
            "fix the `dataset` key of the version's train table in models.toml",
        )
    return loader()
