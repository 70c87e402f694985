"""Request decoding and image preprocessing for marforge's image-classifier handler.

Shipped flat beside `image_handler.py` in every archive and imported as a top-level module. It
holds everything that is not the handler class itself (TorchServe's loader insists that the handler
module define exactly one class). Nothing here knows about TorchServe, so it is tested directly.

A request row is one dict from TorchServe: `{"body": ...}` for a raw body, `{"data": ...}` or any
form-field name for multipart, with JSON bodies already parsed when the Content-Type says JSON.
"""

import base64
import binascii
import io
import json
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

CONFIG_KEYS = {"image_size", "color", "mean", "std", "labels", "top_k", "max_pixels", "min_side",
               "half_precision", "pin_memory"}
CHANNELS = {"grayscale": 1, "rgb": 3}
PIL_MODE = {"grayscale": "L", "rgb": "RGB"}
SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


class BadInput(Exception):
    """A request that cannot be answered; `code` is the HTTP status, `kind` a short error name."""

    def __init__(self, kind, message, code=400):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.code = code

    def as_dict(self):
        return {"code": self.code, "type": self.kind, "message": self.message}


@dataclass(frozen=True)
class HandlerConfig:
    """The `handler:` section of an archive's model-config.yaml, validated."""

    image_size: tuple  # (height, width) the model expects
    color: str  # "grayscale" or "rgb"
    mean: tuple  # one value per channel, applied after scaling pixels to [0, 1]
    std: tuple
    labels: tuple  # class index -> name
    top_k: int = 3
    max_pixels: int = 4096 * 4096
    min_side: int = 8  # smaller images carry too little to classify (sklearn's digits are 8 x 8)
    half_precision: bool = False  # float16 model and inputs; on a CUDA device only (placement.py)
    pin_memory: bool = True  # copy batches to the GPU through pinned memory; on a CUDA device only

    @classmethod
    def from_dict(cls, section):
        if not isinstance(section, dict):
            raise ValueError("model-config.yaml needs a 'handler:' section (image_size, color, mean, std, labels)")
        unknown = sorted(set(section) - CONFIG_KEYS)
        if unknown:
            raise ValueError(f"unknown key(s) in the handler section: {', '.join(unknown)}")
        missing = sorted({"image_size", "color", "mean", "std", "labels"} - set(section))
        if missing:
            raise ValueError(f"the handler section lacks: {', '.join(missing)}")
        size = section["image_size"]
        size = (size, size) if isinstance(size, int) else tuple(size)
        color = section["color"]
        if color not in CHANNELS:
            raise ValueError(f"handler color must be one of {sorted(CHANNELS)}, not {color!r}")
        mean, std = tuple(section["mean"]), tuple(section["std"])
        if len(mean) != CHANNELS[color] or len(std) != CHANNELS[color]:
            raise ValueError(f"handler mean and std need {CHANNELS[color]} value(s) for {color}")
        if len(size) != 2 or min(size) < 1 or min(std) <= 0:
            raise ValueError("handler image_size needs two positive numbers and std must be positive")
        flags = {"half_precision": section.get("half_precision", False), "pin_memory": section.get("pin_memory", True)}
        for key, value in flags.items():
            if not isinstance(value, bool):
                raise ValueError(f"handler {key} must be true or false, not {value!r}")
        config = cls(size, color, mean, std, tuple(section["labels"]), int(section.get("top_k", 3)),
                     int(section.get("max_pixels", 4096 * 4096)), int(section.get("min_side", 8)), **flags)
        if not config.labels or config.top_k < 1:
            raise ValueError("handler labels must not be empty and top_k must be at least 1")
        return config


def extract_payload(row):
    """The image bytes of one request row, whichever way the client sent them."""
    value = row.get("body", row.get("data"))
    if value is None:  # multipart with another field name: take the first field that has bytes
        value = next((v for v in row.values() if isinstance(v, (bytes, bytearray))), None)
    if isinstance(value, str) and value.lstrip()[:1] in ("{", "["):
        value = value.encode()  # JSON sent as text/plain
    if isinstance(value, (bytes, bytearray)) and value.lstrip()[:1] in (b"{", b"["):
        value = _parse_json(value)
    if isinstance(value, (dict, list, int, float)):  # JSON, parsed by TorchServe or above
        value = _base64_field(value)
    if isinstance(value, str):
        raise BadInput("InvalidInput", "the body is text, not an image: send the image bytes, "
                       'or JSON {"data": "<base64 image>"} with Content-Type: application/json')
    if not value:
        raise BadInput("EmptyInput", "the request has no image: send the image bytes as the body "
                       '(curl -T image.png), as a multipart field, or as base64 in JSON {"data": ...}')
    return bytes(value)


def _parse_json(raw):
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput("InvalidJSON", f"the body starts like JSON but is not valid JSON: {exc}") from None


def _base64_field(obj):
    data = obj.get("data") if isinstance(obj, dict) else None
    if not isinstance(data, str) or set(obj) - {"data"}:
        got = f"keys {', '.join(sorted(obj)) or 'none'}" if isinstance(obj, dict) else type(obj).__name__
        raise BadInput("InvalidJSON", 'a JSON body must be an object with one key, "data", holding '
                       f"a base64-encoded image (got {got})")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadInput("InvalidBase64", f'"data" is not valid base64: {exc}') from None


def decode_image(payload, config):
    """Decode bytes into a PIL image of the configured size and color, or raise BadInput."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Pillow's notes on damaged files; errors still raise
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(payload))
            width, height = image.size
            if min(width, height) < config.min_side:
                raise BadInput("ImageTooSmall", f"the image is {width}x{height} pixels: too small to classify "
                               f"(each side needs at least {config.min_side})")
            if width * height > config.max_pixels:
                raise BadInput("ImageTooLarge", f"the image declares {width}x{height} pixels, more than "
                               f"the {config.max_pixels} this model accepts", 413)
            frames = getattr(image, "n_frames", 1)
            if frames > 1:
                raise BadInput("UnsupportedImage", f"the {image.format} image has {frames} frames: send one frame")
            image.load()
            image = _to_mode(image, PIL_MODE[config.color])
        except BadInput:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise BadInput("ImageTooLarge", f"refused as a decompression bomb: {exc}", 413) from None
        except UnidentifiedImageError:
            raise BadInput("InvalidImage", f"the body ({len(payload)} bytes) is not an image format "
                           "Pillow can read (PNG, JPEG, GIF, BMP, TIFF, WebP, ...)") from None
        except Exception as exc:  # Pillow reports damaged files with many types (OSError, TypeError, ...)
            raise BadInput("InvalidImage", f"the image data is broken or truncated: {type(exc).__name__}: {exc}") from None
    target = (config.image_size[1], config.image_size[0])  # Pillow sizes are (width, height)
    return image if image.size == target else image.resize(target, Image.BILINEAR)


def _to_mode(image, mode):
    """Convert any Pillow mode to 8-bit L or RGB: 16-bit is scaled down, alpha composited on black."""
    if image.mode in SIXTEEN_BIT_MODES:
        pixels = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.rint(pixels / 257.0), 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        raise BadInput("UnsupportedImage", "floating-point images (mode F) are not supported: send 8- or 16-bit pixels")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    return image if image.mode == mode else image.convert(mode)


def to_tensor(image, config):
    """A C x H x W float tensor: pixels scaled to [0, 1], then normalised with the configured mean/std.

    Computed as pixels * (1 / (255 * std)) + (-mean / std) in one fused op with constants made once
    per config: per-image tensor ops cost more than the arithmetic on a 28 x 28 image.
    """
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32))
    scale, shift = _affine(config.mean, config.std)
    return torch.addcmul(shift, pixels.view(image.size[1], image.size[0], -1).permute(2, 0, 1), scale)


@lru_cache(maxsize=32)
def _affine(mean, std):
    """(scale, shift), each C x 1 x 1: normalised = pixel * scale + shift for 8-bit pixels."""
    std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    return 1.0 / (255.0 * std), -mean / std


def prepare(row, config):
    """One request row -> model input tensor (C x H x W), or BadInput saying what was wrong."""
    return to_tensor(decode_image(extract_payload(row), config), config)


def top_k(probabilities, config):
    """The k most likely labels of one probability vector, most likely first."""
    k = min(config.top_k, probabilities.shape[-1])
    values, indices = torch.topk(probabilities, k)
    return [
        {"label": config.labels[i] if i < len(config.labels) else str(i), "index": i, "probability": p}
        for p, i in zip(values.tolist(), indices.tolist())
    ]
