"""Request decoding and image preprocessing for marforge's image-classifier handler.

Shipped flat beside `image_handler.py` in every archive and imported as a top-level module. It
turns a request row into the model's input (decoding and checking the image here, the geometry and
normalisation in `contract`) and a probability vector into the labels of an answer. Nothing here
knows about TorchServe, so it is tested directly.

A request row is one dict from TorchServe: `{"body": ...}` for a raw body, `{"data": ...}` or any
form-field name for multipart, with JSON bodies already parsed when the Content-Type says JSON.
"""

import base64
import binascii
import io
import json
import warnings

import contract
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


class BadInput(Exception):
    """A request that cannot be answered; `code` is the HTTP status, `kind` a short error name.

    `protocol` and `request_id` say which request it answers once that is known (None before):
    `located` builds the same error with them, so no field is attached after construction.
    """

    def __init__(self, kind, message, code=400, protocol=None, request_id=None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.code = code
        self.protocol = protocol
        self.request_id = request_id

    def located(self, protocol, request_id):
        """This error, built again for the request of `protocol` with id `request_id`."""
        return BadInput(self.kind, self.message, self.code, protocol, request_id)

    def as_dict(self):
        return {"code": self.code, "type": self.kind, "message": self.message}


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


def check_size(width, height, config):
    """BadInput when a declared size is too small to classify or larger than the model accepts."""
    if min(width, height) < config.min_side:
        raise BadInput("ImageTooSmall", f"the image is {width}x{height} pixels: too small to classify "
                       f"(each side needs at least {config.min_side})")
    if width * height > config.max_pixels:
        raise BadInput("ImageTooLarge", f"the image declares {width}x{height} pixels, more than "
                       f"the {config.max_pixels} this model accepts", 413)


def decode_image(payload, config):
    """Decode bytes into a PIL image in the configured color mode (any size), or raise BadInput."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Pillow's notes on damaged files; errors still raise
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(payload))
            check_size(*image.size, config)
            frames = getattr(image, "n_frames", 1)
            if frames > 1:
                raise BadInput("UnsupportedImage", f"the {image.format} image has {frames} frames: send one frame")
            image.load()
            image = _to_mode(image, contract.PIL_MODES[config.color])
        except BadInput:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise BadInput("ImageTooLarge", f"refused as a decompression bomb: {exc}", 413) from None
        except UnidentifiedImageError:
            raise BadInput("InvalidImage", f"the body ({len(payload)} bytes) is not an image format "
                           "Pillow can read (PNG, JPEG, GIF, BMP, TIFF, WebP, ...)") from None
        except Exception as exc:  # Pillow reports damaged files with many types (OSError, TypeError, ...)
            raise BadInput("InvalidImage", f"the image data is broken or truncated: {type(exc).__name__}: {exc}") from None
    return image


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


def decode(row, config):
    """One request row -> its image, decoded, checked and in the configured color mode, or BadInput."""
    return decode_image(extract_payload(row), config)


def prepare(row, config):
    """One request row -> the model's input (C x H x W, or 10 x C x H x W for ten-crop), or BadInput
    saying what was wrong."""
    return contract.to_input(decode(row, config), config)


def top_k(probabilities, config):
    """The k most likely labels of one probability vector, most likely first."""
    k = min(config.top_k, probabilities.shape[-1])
    values, indices = torch.topk(probabilities, k)
    return [
        {"label": config.labels[i] if i < len(config.labels) else str(i), "index": i, "probability": p}
        for p, i in zip(values.tolist(), indices.tolist())
    ]


def judged(probabilities, config):
    """A multilabel answer's labels: every label in model order with its probability, its threshold
    and whether it is positive; then the positive ones, most likely first."""
    labels = [{"label": config.labels[i], "index": i, "probability": p, "threshold": config.threshold_of(i),
               "positive": p >= config.threshold_of(i)} for i, p in enumerate(probabilities.tolist())]
    positive = sorted((entry for entry in labels if entry["positive"]), key=lambda e: -e["probability"])
    return {"predictions": labels, "positive": [{"label": e["label"], "index": e["index"],
                                                  "probability": e["probability"]} for e in positive]}


def answer(probabilities, config):
    """The labels part of an answer for one image's probability vector, as the model's task asks."""
    if config.task == "multilabel":
        return judged(probabilities, config)
    return {"predictions": top_k(probabilities, config)}


JPEG_START = b"\xff\xd8\xff"


def gpu_view(payload, config, device):
    """(the model's input, the image's size) of a JPEG decoded by the GPU (nvJPEG through torchvision)
    and resized and cropped there as `contract.fit` does on the CPU (bilinear with antialiasing,
    torchvision's sizes and crop offsets, rounded to 8-bit); None for anything else (another format,
    a CMYK JPEG, a file the GPU decoder refuses), which is then decoded by Pillow."""
    if bytes(payload[:3]) != JPEG_START:
        return None
    import torchvision
    from torchvision.io import ImageReadMode

    try:
        header = Image.open(io.BytesIO(payload))
    except Exception:  # Pillow's error says what is wrong: let the CPU path raise it
        return None
    check_size(*header.size, config)
    if header.mode not in ("L", "RGB"):
        return None
    mode = ImageReadMode.RGB if config.color == "rgb" else ImageReadMode.GRAY
    try:
        pixels = torchvision.io.decode_jpeg(torch.frombuffer(bytearray(payload), dtype=torch.uint8), mode=mode,
                                            device=device)
    except RuntimeError:
        return None
    views = [contract.normalise(v.movedim(0, -1), config.mean, config.std) for v in _tensor_views(pixels, config)]
    return (views[0] if len(views) == 1 else torch.stack(views)), header.size


def _tensor_views(pixels, config):
    """contract.fit for a C x H x W uint8 tensor: the views, as 8-bit values in float32."""
    from torch.nn import functional

    height, width = config.image_size
    if config.crop == "none":
        size = (height, width)
    else:
        h, w = pixels.shape[-2:]
        short, long = min(h, w), max(h, w)
        new_long = int(config.resize * long / short)
        size = (new_long, config.resize) if h > w else (config.resize, new_long)
    resized = functional.interpolate(pixels[None].float(), size=size, mode="bilinear", antialias=True,
                                     align_corners=False)[0].round().clamp(0, 255)
    if config.crop == "none":
        return [resized]

    def five(image):  # torchvision's FiveCrop: the four corners, then the center
        h, w = image.shape[-2:]
        top, left = round((h - height) / 2.0), round((w - width) / 2.0)
        return [image[:, y:y + height, x:x + width]
                for y, x in ((0, 0), (0, w - width), (h - height, 0), (h - height, w - width), (top, left))]

    return [five(resized)[4]] if config.crop == "center" else five(resized) + five(torch.flip(resized, dims=[-1]))
