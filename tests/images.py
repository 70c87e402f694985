"""Images made here with Pillow for the decoding tests: valid ones in awkward formats, and hostile ones."""

import io
import zlib

import numpy as np
from PIL import Image


def encode(image, fmt="PNG", **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def gradient(size=(28, 28)):
    """A deterministic 8-bit grayscale test image."""
    w, h = size
    return Image.fromarray((np.add.outer(np.arange(h), np.arange(w)) * 255 // (w + h - 2)).astype(np.uint8), "L")


def png_declaring(width, height):
    """A tiny valid PNG whose header (with a correct CRC) declares width x height pixels."""
    png = encode(Image.new("L", (1, 1)))
    ihdr = png[12:16] + width.to_bytes(4, "big") + height.to_bytes(4, "big") + png[24:29]
    return png[:12] + ihdr + zlib.crc32(ihdr).to_bytes(4, "big") + png[33:]


def multi_frame(fmt):
    frames = [gradient(), Image.new("L", (28, 28), 0)]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:])


def sixteen_bit_png():
    return encode(Image.fromarray(np.asarray(gradient(), dtype=np.uint16) * 257))


def truncated(fmt):
    data = encode(gradient((64, 64)).convert("RGB"), fmt)
    return data[: len(data) // 2]
