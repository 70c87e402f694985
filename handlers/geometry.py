"""An image's geometry as a model sees it: the resize and the crops of `HandlerConfig`, and where the
model's view lies in the image as sent. One arithmetic (`resized`, `crop_origins`) serves a Pillow
image (`fit`), a tensor decoded on a GPU (`fit_tensor`) and an explanation's box (`crop_box`).
Shipped beside contract.py (which re-exports `fit` and `crop_box`); like it, only the standard
library is imported at module level.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from contract import HandlerConfig
    from PIL import Image


def fit(image: Image.Image, config: HandlerConfig) -> list[Image.Image]:
    """A decoded Pillow image (in the configured color mode) -> the model's views of it: a list of
    Pillow images of the input size. crop "keep": the image as it is; "none": resized to the input size;
    "center" and "ten": the shorter side resized to `resize` (aspect kept), then the center crop, or
    torchvision's TenCrop (the four corners and the center, then the same five of the mirrored image).
    Sizes, rounding and filter are torchvision's (Resize, CenterCrop, FiveCrop, TenCrop on a Pillow image)."""
    from PIL import Image

    height, width = config.image_size
    size = resized(image.size, config)
    if config.crop == "keep":
        return [image]
    if image.size != size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    if config.crop == "none":
        return [image]
    views = [image.crop((x, y, x + width, y + height)) for x, y in crop_origins(image.size, config)]
    if config.crop == "ten":
        mirrored = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        views += [mirrored.crop((x, y, x + width, y + height)) for x, y in crop_origins(mirrored.size, config)]
    return views


def fit_tensor(pixels: torch.Tensor, config: HandlerConfig) -> list[torch.Tensor]:
    """`fit` for a C x H x W uint8 tensor (an image decoded on a GPU): the views, as 8-bit values in
    float32, from the same sizes and crop origins, resized bilinearly with antialiasing."""
    import torch
    from torch.nn import functional

    height, width = config.image_size
    if config.crop == "keep":
        return [pixels.float()]
    w, h = resized((pixels.shape[-1], pixels.shape[-2]), config)
    image = functional.interpolate(pixels[None].float(), size=(h, w), mode="bilinear", antialias=True,
                                   align_corners=False)[0].round().clamp(0, 255)
    if config.crop == "none":
        return [image]
    images = [image, torch.flip(image, dims=[-1])] if config.crop == "ten" else [image]
    return [view[:, y:y + height, x:x + width] for view in images for x, y in crop_origins((w, h), config)]


def resized(size: tuple[int, int], config: HandlerConfig) -> tuple[int, int]:
    """The (width, height) an image of `size` is resized to before cropping: the input size for crop
    "none", the size itself for "keep", else the shorter side made `resize` with the aspect kept
    (torchvision's Resize(int))."""
    height, width = config.image_size
    if config.crop == "keep":
        return size
    if config.crop == "none":
        return width, height
    assert config.resize is not None  # HandlerConfig._check_geometry: a crop needs resize
    w, h = size
    side = config.resize
    return (side, int(side * h / w)) if w <= h else (int(side * w / h), side)


def crop_origins(size: tuple[int, int], config: HandlerConfig) -> list[tuple[int, int]]:
    """The (left, top) of each crop of a resized image of `size`: the center one ("center"), or
    torchvision's FiveCrop order, the four corners (tl, tr, bl, br) then the center ("ten", per image)."""
    height, width = config.image_size
    w, h = size
    center = (round((w - width) / 2.0), round((h - height) / 2.0))
    if config.crop == "center":
        return [center]
    return [(0, 0), (w - width, 0), (0, h - height), (w - width, h - height), center]


def crop_box(size: tuple[int, int], config: HandlerConfig) -> tuple[float, ...]:
    """Where the model's center view lies in an image of `size` (width, height), in that image's
    pixels: (left, top, right, bottom). What an explanation's heatmap covers."""
    w, h = size
    if config.crop in ("none", "keep"):
        return (0, 0, w, h)
    rw, rh = resized(size, config)
    height, width = config.image_size
    left, top = crop_origins((rw, rh), config)[-1]
    scale = rw / w if w <= h else rh / h  # the shorter side's scale: resize / min(w, h)
    return tuple(round(v / scale, 1) for v in (left, top, left + width, top + height))
