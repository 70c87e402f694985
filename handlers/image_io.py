"""Image decoding for marforge's handler: an image's bytes become a checked Pillow image.

Shipped flat beside `image_handler.py` in every archive and imported as a top-level module. It
decodes and checks the image bytes a request carries (`protocols` reads them out of the request;
the geometry is `geometry.py`'s and the normalisation `contract`'s), on the CPU with Pillow or, for
a JPEG on a GPU worker, with nvJPEG (`gpu_view`). It also owns `BadInput`, the error every module
of the request path raises for a request that cannot be answered. Nothing here knows about
TorchServe, so it is tested directly.
"""

import io
import warnings

import contract
import geometry
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


def encoded(width, height, color, fmt):
    """A blank image of `width` x `height` in the color mode `color` (contract.PIL_MODES' keys), encoded
    as `fmt` ("PNG", "JPEG"): what a request body carries, for the worker's warm-up."""
    out = io.BytesIO()
    Image.new(contract.PIL_MODES[color], (width, height)).save(out, format=fmt)
    return out.getvalue()


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
    views = [contract.normalise(v.movedim(0, -1), config.mean, config.std) for v in geometry.fit_tensor(pixels, config)]
    return (views[0] if len(views) == 1 else torch.stack(views)), header.size
