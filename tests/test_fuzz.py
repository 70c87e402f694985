"""Fuzzing the decode and preprocess path: any bytes give a model input or a 4xx BadInput, nothing else.

Inputs that ever broke this live in tests/fuzz_corpus/ and are replayed on every run. To add one:
save the bytes hypothesis printed as tests/fuzz_corpus/<short-name>.bin.
"""

import io
import math
from pathlib import Path

import contract
import image_io
import numpy as np
import protocols
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

CORPUS = Path(__file__).parent / "fuzz_corpus"
CONFIG = contract.HandlerConfig.from_dict({
    "image_size": [28, 28], "color": "grayscale", "mean": [0.286], "std": [0.353],
    "labels": [str(i) for i in range(10)], "max_pixels": 1 << 20,
})
FORMATS = ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "ICO", "PPM"]


def seed_images():
    """One small valid file per format and mode: the starting points that mutations break."""
    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8), "RGB")
    seeds = []
    for fmt in FORMATS:
        for mode in ("RGB", "L", "P"):
            buffer = io.BytesIO()
            try:
                base.convert(mode).save(buffer, format=fmt)
                Image.open(io.BytesIO(buffer.getvalue())).load()
            except (OSError, ValueError):  # a mode this format cannot store, or a file this Pillow writes empty
                continue
            seeds.append(buffer.getvalue())
    return seeds


SEEDS = seed_images()


def check(payload):
    """The property: a finite C x H x W tensor of the configured shape, or a BadInput with a 4xx code."""
    try:
        tensor = protocols.prepare({"body": payload}, CONFIG)
    except image_io.BadInput as error:
        assert 400 <= error.code < 500 and error.message
        return
    assert tuple(tensor.shape) == (1, 28, 28)
    assert math.isfinite(float(tensor.sum()))


@st.composite
def mutated(draw):
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "overwrite"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        else:
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[pos:pos + len(chunk)] = chunk
    return bytes(data)


FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


@FUZZ
@given(st.binary(max_size=2048))
def test_arbitrary_bytes(payload):
    check(payload)


@FUZZ
@given(mutated())
def test_mutated_images(payload):
    check(payload)


@pytest.mark.parametrize("payload", SEEDS, ids=lambda p: f"{len(p)}B")
def test_every_seed_format_decodes(payload):
    assert protocols.prepare({"body": payload}, CONFIG).shape == (1, 28, 28)


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.bin")), ids=lambda p: p.stem)
def test_corpus_of_inputs_that_once_broke_decoding(path):
    check(path.read_bytes())
