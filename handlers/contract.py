"""The build<->serve contract: what an archive tells its handler, and how an image becomes model input.

One file, shipped flat in every archive beside the handler and imported by marforge itself
(marforge/shipped.py), so that building, verification, training and the serving handler all read
and compute these facts the same way:

- the `handler:` section of an archive's model-config.yaml: `HandlerConfig` validates it, and
  `handler_section` writes it from a version's weights metadata and its registry options;
- the weights metadata's `preprocess` entry, which training writes with `preprocess_metadata`;
- the format stamp, `marforge: {format: ...}`, that says how the archive's model file was made;
- the preprocessing itself: the image's geometry (`fit`: resize, center or ten crops, from geometry.py) and
  the normalisation of its pixels (`normalise`), which `to_input` applies in that order;
- how the model's outputs become probabilities (`activate`).

Only the standard library is imported at module level: the registry checks format names against
this file before the virtualenv exists (the Makefile's archive list). torch, numpy and Pillow are
imported by the functions that need them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from geometry import crop_box, fit  # the image's geometry, re-exported: contract.fit is what every caller uses

if TYPE_CHECKING:  # for the annotations only: nothing but the standard library loads at import
    import torch
    from PIL import Image

__all__ = ["crop_box", "fit"]  # and everything defined below

CONFIG_FILE = "model-config.yaml"  # the archive's config; its `handler:` section is HandlerConfig
FORMATS = ("eager", "torchscript", "onnx", "compile", "quantized", "cudagraphs", "export")  # how an archive's model is made
DEFAULT_FORMAT = "eager"
# An export archive's torch.export program is named <key><EXPORT_SUFFIX>: BaseHandler hands a serialized
# file without a model file to its TorchScript loader only when the name ends in .pt, and the handler's
# loader (programs.py) opens it with torch.export.load instead.
EXPORT_SUFFIX = "-export.pt"
STAMP_SECTION = "marforge"  # model-config.yaml: {marforge: {format: ...}}
CHANNELS = {"grayscale": 1, "rgb": 3}
PIL_MODES = {"grayscale": "L", "rgb": "RGB"}
PREPROCESS_KEYS = ("image_size", "color", "mean", "std", "resize", "crop")  # the weights metadata's `preprocess`
# Threads per worker of each version that `make tune` chose them for, in the frontend's environment
# (every worker inherits it): "fashion-2.0=1,chexnet-0.1=2". The others take OMP_NUM_THREADS's.
THREADS_ENV = "MARFORGE_THREADS"


def threads_setting(threads: Mapping[str, int]) -> str:  # THREADS_ENV's value for {version key: threads}
    return ",".join(f"{key}={count}" for key, count in threads.items())


def threads_of(environ: Mapping[str, str], key: str) -> int | None:  # version `key`'s threads, None: unset
    return next((int(n) for k, _, n in (item.rpartition("=") for item in environ.get(THREADS_ENV, "").split(","))
                 if k == key and n.isdigit()), None)


def format_stamp(fmt: str, eager: tuple[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """The model-config.yaml section that records an archive's format and, for a format that is not
    eager PyTorch, the eager model file and weights it also carries (explanations need gradients):
    `eager` is (model file name, weights file name) at the archive's root."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown archive format {fmt!r} (known: {', '.join(FORMATS)})")
    stamp: dict[str, Any] = {"format": fmt}
    if eager:
        stamp["eager"] = {"model_file": eager[0], "weights": eager[1]}
    return {STAMP_SECTION: stamp}


def archive_format(model_yaml_config: Mapping[str, Any] | None) -> str:
    """The format an archive's model-config.yaml records; eager when it records none."""
    return str(((model_yaml_config or {}).get(STAMP_SECTION) or {}).get("format", DEFAULT_FORMAT))


def eager_files(model_yaml_config: Mapping[str, Any] | None, manifest: Mapping[str, Any]) -> tuple[str, str] | None:
    """(model file, weights file) of the eager model in an unpacked archive, or None: the archive's own
    for an eager or compile archive, else those its format stamp records."""
    stamp = (model_yaml_config or {}).get(STAMP_SECTION) or {}
    if stamp.get("eager"):
        return str(stamp["eager"]["model_file"]), str(stamp["eager"]["weights"])
    model = manifest["model"]
    return (str(model["modelFile"]), str(model["serializedFile"])) if model.get("modelFile") else None


@dataclass(frozen=True)
class HandlerConfig:
    """The `handler:` section of an archive's model-config.yaml, validated."""

    image_size: tuple[int, int]  # (height, width) the model expects
    color: str  # "grayscale" or "rgb"
    mean: tuple[float, ...]  # one value per channel, applied after scaling pixels to [0, 1]
    std: tuple[float, ...]
    labels: tuple[str, ...]  # output index -> name
    resize: int | None = None  # the shorter side is resized to this (aspect kept), then cropped; None: resized to image_size
    crop: str = "none"  # "none", "center", "ten" (torchvision's TenCrop: four corners and the center, and their mirror)
    #                     or "keep": the image at the size it was sent (a detector resizes inside)
    task: str = "multiclass"  # one of TASKS: multiclass (top_k answered), multilabel (every label judged), detection, segmentation
    activation: str | None = None  # turns outputs into probabilities: "softmax", "sigmoid" or "none" (the default: by task)
    thresholds: tuple[float, ...] | None = None  # multilabel: the probability at which each label is positive (default 0.5)
    top_k: int = 3  # multiclass: labels per answer
    score_threshold: float = 0.5  # detection: the lowest score a detection is answered with
    max_detections: int = 100  # detection: the most detections answered per image, most confident first
    max_pixels: int = 4096 * 4096  # refuse images that declare more pixels than this
    min_side: int = 8  # smaller images carry too little to classify (sklearn's digits are 8 x 8)
    half_precision: bool = False  # float16 model and inputs; on a CUDA device only (placement.py)
    pin_memory: bool = True  # copy batches to the GPU through pinned memory; on a CUDA device only
    channels_last: bool = False  # the model and its inputs in channels-last memory order; on a CUDA device only
    gpu_decode: bool = False  # JPEG bodies decoded and resized on the worker's GPU (nvJPEG); CPU elsewhere
    warm_up: bool = True  # run the model on every batch size before the worker reports ready (image_handler._warm_up)

    @classmethod
    def keys(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    @classmethod
    def from_dict(cls, section: object) -> HandlerConfig:
        if not isinstance(section, dict):
            raise ValueError("model-config.yaml needs a 'handler:' section (image_size, color, mean, std, labels)")
        unknown = sorted(set(section) - cls.keys())
        if unknown:
            raise ValueError(f"unknown key(s) in the handler section: {', '.join(unknown)}")
        missing = sorted({"image_size", "color", "mean", "std", "labels"} - set(section))
        if missing:
            raise ValueError(f"the handler section lacks: {', '.join(missing)}")
        values = {f.name: section.get(f.name, f.default) for f in fields(cls)}
        size = values["image_size"]
        values.update(image_size=(size, size) if isinstance(size, int) else tuple(size), mean=tuple(values["mean"]),
                      std=tuple(values["std"]), labels=tuple(values["labels"]),
                      thresholds=None if values["thresholds"] is None else tuple(values["thresholds"]),
                      activation=values["activation"] or TASKS.get(values["task"], ("none",))[0],
                      score_threshold=float(values["score_threshold"]),
                      **{k: int(values[k]) for k in ("top_k", "max_pixels", "min_side", "max_detections")})
        for f in fields(cls):
            if f.type in (bool, "bool") and not isinstance(values[f.name], bool):
                raise ValueError(f"handler {f.name} must be true or false, not {values[f.name]!r}")
        config = cls(**values)
        config._check_input()
        config._check_outputs()
        config._check_geometry()
        return config

    def _check_input(self) -> None:
        if self.color not in CHANNELS:
            raise ValueError(f"handler color must be one of {sorted(CHANNELS)}, not {self.color!r}")
        if len(self.mean) != CHANNELS[self.color] or len(self.std) != CHANNELS[self.color]:
            raise ValueError(f"handler mean and std need {CHANNELS[self.color]} value(s) for {self.color}")
        if len(self.image_size) != 2 or min(self.image_size) < 1 or min(self.std) <= 0:
            raise ValueError("handler image_size needs two positive numbers and std must be positive")

    def _check_outputs(self) -> None:
        if not self.labels or self.top_k < 1 or self.max_detections < 1:
            raise ValueError("handler labels must not be empty, and top_k and max_detections must be at least 1")
        if self.task == "segmentation" and len(self.labels) > 256:
            raise ValueError(f"a segmentation model may have at most 256 classes (its mask is 8-bit), not {len(self.labels)}")
        if not 0 <= self.score_threshold <= 1:
            raise ValueError(f"handler score_threshold must be a score from 0 to 1, not {self.score_threshold}")
        if self.task not in TASKS:
            raise ValueError(f"handler task must be one of {', '.join(TASKS)}, not {self.task!r}")
        if self.activation not in TASKS[self.task]:
            raise ValueError(f"a {self.task} model's activation must be one of {', '.join(TASKS[self.task])}, "
                             f"not {self.activation!r}")
        if self.thresholds is not None:
            if self.task != "multilabel":
                raise ValueError("handler thresholds apply to multilabel models only")
            if len(self.thresholds) != len(self.labels) or not all(0 <= t <= 1 for t in self.thresholds):
                raise ValueError(f"handler thresholds need one probability (0 to 1) per label ({len(self.labels)})")

    def _check_geometry(self) -> None:
        if self.crop not in CROPS:
            raise ValueError(f"handler crop must be one of {', '.join(CROPS)}, not {self.crop!r}")
        if self.crop in ("none", "keep") and self.resize is not None:
            raise ValueError("handler resize (of the shorter side) needs a crop (center or ten): without one the "
                             "model would get inputs of varying size")
        if self.crop not in ("none", "keep") and (not isinstance(self.resize, int) or self.resize < max(self.image_size)):
            raise ValueError(f"handler crop {self.crop!r} needs resize: the shorter side's length before cropping, "
                             f"at least the crop's {max(self.image_size)}")

    @property
    def input_size(self) -> tuple[int, int] | None:
        """(height, width) of every model input, or None when the model takes each image at its own size."""
        return None if self.crop == "keep" else self.image_size

    @property
    def crops(self) -> int:
        """Model inputs per image: 10 for ten-crop, else 1."""
        return 10 if self.crop == "ten" else 1

    def threshold_of(self, index: int) -> float:  # the probability at which label `index` counts as positive
        return DEFAULT_THRESHOLD if self.thresholds is None else self.thresholds[index]


# task -> its activations (the first is its default), and the handler module that serves it
TASKS = {"multiclass": ("softmax", "none"), "multilabel": ("sigmoid", "none"), "detection": ("none",),
         "segmentation": ("none",)}
TASK_MODULES = {"multiclass": "classification", "multilabel": "classification", "detection": "detection",
                "segmentation": "segmentation"}
# the formats a task's archives can be made in (every one for a classifier; marforge/tasks/<module>.py says why not)
TASK_FORMATS = {"detection": ("eager", "torchscript"), "segmentation": ("eager", "torchscript")}


def formats_for(task: str) -> tuple[str, ...]:
    """The archive formats a model of `task` can be built in."""
    return TASK_FORMATS.get(task, FORMATS)
CROPS = ("none", "center", "ten", "keep")
DEFAULT_THRESHOLD = 0.5
OUTPUT_KEYS = ("task", "activation")  # the weights metadata says how to read the model's outputs


def option_keys() -> set[str]:
    """The handler settings a registry may give per version (the rest come from the weights' metadata)."""
    return HandlerConfig.keys() - set(PREPROCESS_KEYS) - set(OUTPUT_KEYS) - {"labels"} | {"crop"}


def preprocess_metadata(image_size: Sequence[int], color: str, mean: Sequence[float], std: Sequence[float], resize: int | None = None,
                        crop: str = "none") -> dict[str, Any]:
    """The `preprocess` entry of a version's weights metadata: how the model's inputs were made."""
    entry: dict[str, Any] = {"image_size": list(image_size), "color": color, "mean": list(mean), "std": list(std)}
    if crop != "none":
        entry.update(resize=resize, crop=crop)
    HandlerConfig.from_dict({**entry, "labels": ["-"]})  # the same checks an archive's handler makes
    return entry


def handler_section(metadata: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """The `handler:` section of model-config.yaml for a version: its weights metadata's preprocessing,
    labels and outputs, then the registry's handler options (which may also choose another crop, and
    give thresholds as one number or a {label: threshold} table)."""
    preprocess = metadata["preprocess"]
    section = {key: preprocess[key] for key in PREPROCESS_KEYS if key in preprocess}
    section.update(image_size=list(section["image_size"]), mean=list(section["mean"]), std=list(section["std"]),
                   labels=list(metadata["labels"]))
    section.update({key: metadata[key] for key in OUTPUT_KEYS if metadata.get(key) is not None})
    options = dict(options)
    if "thresholds" in options:
        options["thresholds"] = _thresholds(options["thresholds"], section["labels"])
    section.update(options)
    HandlerConfig.from_dict(section)
    return section


def _thresholds(value: object, labels: Sequence[str]) -> list[float]:
    """One threshold per label from a number (all labels) or a {label: threshold} table (others 0.5)."""
    if isinstance(value, (int, float)):
        return [float(value)] * len(labels)
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(labels))
        if unknown:
            raise ValueError(f"thresholds name labels the model does not have: {', '.join(unknown)}")
        return [float(value.get(label, DEFAULT_THRESHOLD)) for label in labels]
    return [float(v) for v in value]  # type: ignore[attr-defined]  # a list; HandlerConfig checks it


def normalise(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """8-bit pixel values (..., H, W, C), channels last as image libraries give them -> (..., C, H, W)
    float32, scaled to [0, 1] and normalised per channel: (pixel / 255 - mean) / std.

    Computed as pixel * (1 / (255 * std)) + (-mean / std) in one fused op, with the constants made
    once per (mean, std): per-image tensor ops would cost more than the arithmetic on a small image.
    """
    import torch

    scale, shift = _affine(tuple(mean), tuple(std))
    if pixels.device != scale.device:  # pixels decoded on a GPU (image_io.gpu_view)
        scale, shift = scale.to(pixels.device), shift.to(pixels.device)
    return torch.addcmul(shift, pixels.to(torch.float32).movedim(-1, -3), scale)


@lru_cache(maxsize=32)
def _affine(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), each C x 1 x 1: normalised = pixel * scale + shift for 8-bit pixels."""
    import torch

    stds = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    means = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    return 1.0 / (255.0 * stds), -means / stds


def to_input(image: Image.Image, config: HandlerConfig) -> torch.Tensor:
    """A decoded Pillow image in the configured color mode -> the model's input: C x H x W, or
    10 x C x H x W for ten-crop."""
    import numpy as np
    import torch

    views = []
    for view in fit(image, config):
        pixels = torch.from_numpy(np.asarray(view, dtype=np.float32))
        views.append(normalise(pixels if pixels.dim() == 3 else pixels.unsqueeze(-1), config.mean, config.std))
    return views[0] if len(views) == 1 else torch.stack(views)


def activate(outputs: torch.Tensor, config: HandlerConfig) -> torch.Tensor:
    """The model's outputs (N x labels) as float32 probabilities: softmax, sigmoid or as they are."""
    import torch

    outputs = outputs.float()
    if config.activation == "softmax":
        return torch.softmax(outputs, dim=1)
    return torch.sigmoid(outputs) if config.activation == "sigmoid" else outputs
