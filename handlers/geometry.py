"""An image's geometry as a model sees it: the resize and the crops of `HandlerConfig`, and where the
model's view lies in the image as sent. Shipped beside contract.py (which re-exports `fit` and
`crop_box`); like it, only the standard library is imported at module level.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from contract import HandlerConfig
    from PIL import Image


def fit(image: Image.Image, config: HandlerConfig) -> list[Image.Image]:
    """A decoded Pillow image (in the configured color mode) -> the model's views of it: a list of
    Pillow images of the input size. crop "none": the image resized to the input size (one view);
    "center" and "ten": the shorter side resized to `resize` (aspect kept), then the center crop, or
    torchvision's TenCrop (the four corners and the center, then the same five of the mirrored image).
    Sizes, rounding and filter are torchvision's (Resize, CenterCrop, FiveCrop, TenCrop on a Pillow image)."""
    from PIL import Image

    height, width = config.image_size
    if config.crop == "none":
        return [image if image.size == (width, height) else image.resize((width, height), Image.Resampling.BILINEAR)]
    assert config.resize is not None  # HandlerConfig._check_geometry: a crop needs resize
    image = _resize_shorter(image, config.resize)
    if config.crop == "center":
        return [_center(image, height, width)]
    return _five(image, height, width) + _five(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), height, width)


def _resize_shorter(image: Image.Image, side: int) -> Image.Image:
    from PIL import Image

    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    if short == side:
        return image
    new_short, new_long = side, int(side * long / short)
    return image.resize((new_short, new_long) if w <= h else (new_long, new_short), Image.Resampling.BILINEAR)


def _center(image: Image.Image, height: int, width: int) -> Image.Image:
    w, h = image.size
    top, left = round((h - height) / 2.0), round((w - width) / 2.0)
    return image.crop((left, top, left + width, top + height))


def _five(image: Image.Image, height: int, width: int) -> list[Image.Image]:
    w, h = image.size
    corners = [(0, 0), (w - width, 0), (0, h - height), (w - width, h - height)]  # tl, tr, bl, br
    return [image.crop((x, y, x + width, y + height)) for x, y in corners] + [_center(image, height, width)]


def crop_box(size: tuple[int, int], config: HandlerConfig) -> tuple[float, ...]:
    """Where the model's center view lies in an image of `size` (width, height), in that image's
    pixels: (left, top, right, bottom). What an explanation's heatmap covers."""
    w, h = size
    if config.crop == "none":
        return (0, 0, w, h)
    assert config.resize is not None  # a crop needs resize
    scale = config.resize / min(w, h)
    rw, rh = (config.resize, int(config.resize * h / w)) if w <= h else (int(config.resize * w / h), config.resize)
    height, width = config.image_size
    left, top = round((rw - width) / 2.0), round((rh - height) / 2.0)
    return tuple(round(v / scale, 1) for v in (left, top, left + width, top + height))
