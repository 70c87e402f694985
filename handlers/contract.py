"""The build<->serve contract: what an archive tells its handler, and how an image becomes model input.

One file, shipped flat in every archive beside the handler and imported by marforge itself
(marforge/shipped.py), so that building, verification, training and the serving handler all read
and compute these facts the same way:

- the `handler:` section of an archive's model-config.yaml: `HandlerConfig` validates it, and
  `handler_section` writes it from a version's weights metadata and its registry options;
- the weights metadata's `preprocess` entry, which training writes with `preprocess_metadata`;
- the format stamp, `marforge: {format: ...}`, that says how the archive's model file was made;
- the preprocessing itself: the image's geometry (`fit`) and the normalisation of its pixels
  (`normalise`), which `to_input` applies in that order.

Only the standard library is imported at module level: the registry checks format names against
this file before the virtualenv exists (the Makefile's archive list). torch, numpy and Pillow are
imported by the functions that need them.
"""

from dataclasses import dataclass, fields
from functools import lru_cache

CONFIG_FILE = "model-config.yaml"  # the archive's config; its `handler:` section is HandlerConfig
FORMATS = ("eager", "torchscript", "onnx", "compile", "quantized")  # how an archive's model file is made
DEFAULT_FORMAT = "eager"
STAMP_SECTION = "marforge"  # model-config.yaml: {marforge: {format: ...}}
CHANNELS = {"grayscale": 1, "rgb": 3}
PIL_MODES = {"grayscale": "L", "rgb": "RGB"}
PREPROCESS_KEYS = ("image_size", "color", "mean", "std")  # the weights metadata's `preprocess` entry


def format_stamp(fmt):
    """The model-config.yaml section that records an archive's format."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown archive format {fmt!r} (known: {', '.join(FORMATS)})")
    return {STAMP_SECTION: {"format": fmt}}


def archive_format(model_yaml_config):
    """The format an archive's model-config.yaml records; eager when it records none."""
    return ((model_yaml_config or {}).get(STAMP_SECTION) or {}).get("format", DEFAULT_FORMAT)


@dataclass(frozen=True)
class HandlerConfig:
    """The `handler:` section of an archive's model-config.yaml, validated."""

    image_size: tuple  # (height, width) the model expects
    color: str  # "grayscale" or "rgb"
    mean: tuple  # one value per channel, applied after scaling pixels to [0, 1]
    std: tuple
    labels: tuple  # class index -> name
    top_k: int = 3  # labels per answer
    max_pixels: int = 4096 * 4096  # refuse images that declare more pixels than this
    min_side: int = 8  # smaller images carry too little to classify (sklearn's digits are 8 x 8)
    half_precision: bool = False  # float16 model and inputs; on a CUDA device only (placement.py)
    pin_memory: bool = True  # copy batches to the GPU through pinned memory; on a CUDA device only

    @classmethod
    def keys(cls):
        return {f.name for f in fields(cls)}

    @classmethod
    def from_dict(cls, section):
        if not isinstance(section, dict):
            raise ValueError("model-config.yaml needs a 'handler:' section (image_size, color, mean, std, labels)")
        unknown = sorted(set(section) - cls.keys())
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


def preprocess_metadata(image_size, color, mean, std):
    """The `preprocess` entry of a version's weights metadata: what the model was trained on."""
    entry = {"image_size": list(image_size), "color": color, "mean": list(mean), "std": list(std)}
    HandlerConfig.from_dict({**entry, "labels": ["-"]})  # the same checks an archive's handler makes
    return entry


def handler_section(metadata, options):
    """The `handler:` section of model-config.yaml for a version: its weights metadata's preprocessing
    and labels, then the registry's handler options (top_k, limits, precision)."""
    preprocess = metadata["preprocess"]
    section = {key: preprocess[key] for key in PREPROCESS_KEYS}
    section["image_size"] = list(section["image_size"])
    section.update(mean=list(section["mean"]), std=list(section["std"]), labels=list(metadata["labels"]), **options)
    HandlerConfig.from_dict(section)
    return section


def fit(image, config):
    """A Pillow image (already in the configured color mode) resized to the model's input size."""
    from PIL import Image

    target = (config.image_size[1], config.image_size[0])  # Pillow sizes are (width, height)
    return image if image.size == target else image.resize(target, Image.BILINEAR)


def normalise(pixels, mean, std):
    """8-bit pixel values (..., H, W, C), channels last as image libraries give them -> (..., C, H, W)
    float32, scaled to [0, 1] and normalised per channel: (pixel / 255 - mean) / std.

    Computed as pixel * (1 / (255 * std)) + (-mean / std) in one fused op, with the constants made
    once per (mean, std): per-image tensor ops would cost more than the arithmetic on a small image.
    """
    import torch

    scale, shift = _affine(tuple(mean), tuple(std))
    return torch.addcmul(shift, pixels.to(torch.float32).movedim(-1, -3), scale)


@lru_cache(maxsize=32)
def _affine(mean, std):
    """(scale, shift), each C x 1 x 1: normalised = pixel * scale + shift for 8-bit pixels."""
    import torch

    std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    return 1.0 / (255.0 * std), -mean / std


def to_input(image, config):
    """A decoded Pillow image in the configured color mode -> the model's C x H x W input tensor."""
    import numpy as np
    import torch

    pixels = torch.from_numpy(np.asarray(fit(image, config), dtype=np.float32))
    return normalise(pixels if pixels.dim() == 3 else pixels.unsqueeze(-1), config.mean, config.std)
