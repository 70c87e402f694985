"""The segmentation task: per image, each class's share of the pixels and the mask, at the sent size.

Shipped flat beside `image_handler.py` in every archive and imported as a top-level module. It
serves any model with torchvision's segmentation interface: `model(batch)` takes N x C x H x W,
normalised by the handler: each image resized to the model's input size (geometry "none"), or at
its own size (geometry "keep", as torchvision's segmenters take it; the images of one size are
batched), and returns `{"out": N x classes x H x W}` (and "aux", ignored), or that tensor itself. The class scores
are resized bilinearly to the size of the image as sent, and each pixel gets its most likely class.

    answer      {"classes": [{"label", "index", "fraction"}, ...],   the classes present, largest first
                 "mask": {"format": "png", "width", "height", "data": "<base64 PNG>"}}
    v2 outputs  `mask` BYTES [N] (the base64 PNGs), `fractions` FP32 [N, classes], `class_names` BYTES [classes]

The mask is an 8-bit grayscale PNG whose pixel values are class indexes (`labels[value]`): a few KB
where the raw scores would be megabytes (TorchServe's own image_segmenter answers them as nested
lists). It is also the decision a verification compares, pixel by pixel. Segmentation has no
explanations. Nothing here knows about TorchServe.
"""

import base64
import io

EXPLAINS = False


def batch(views):
    """One call's input for images of one size (geometry "keep"): N x C x H x W."""
    import torch

    return torch.stack(views)


def per_image(outputs):
    """One call's outputs as its images' class scores, each 1 x classes x H x W."""
    scores = outputs["out"] if isinstance(outputs, dict) else outputs
    return [scores[i:i + 1] for i in range(scores.shape[0])]


def results(outputs, config, sizes):
    """The model's outputs for a batch (or, for images of their own sizes, `per_image`'s list) -> per
    image its class mask (H x W uint8) at the size it was sent."""
    import torch
    from torch.nn import functional

    scores = outputs if isinstance(outputs, list) else per_image(outputs)
    masks = []
    for i, (width, height) in enumerate(sizes):
        one = scores[i].float()
        if tuple(one.shape[-2:]) != (height, width):
            one = functional.interpolate(one, size=(height, width), mode="bilinear", align_corners=False)
        masks.append(one[0].argmax(0).to(torch.uint8).cpu())
    return masks


def fractions(mask, config):
    """Each class's share of the mask's pixels, in class order."""
    import torch

    counts = torch.bincount(mask.flatten().long(), minlength=len(config.labels))
    return (counts.float() / mask.numel()).tolist()  # float32, as a v2 FP32 output carries it (over gRPC too)


def png(mask):
    """The mask as a base64 8-bit grayscale PNG."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(mask.numpy(), "L").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def answer(mask, config):
    """The answer's task part for one image."""
    shares = [(i, f) for i, f in enumerate(fractions(mask, config)) if f > 0]
    classes = [{"label": config.labels[i], "index": i, "fraction": f} for i, f in sorted(shares, key=lambda e: (-e[1], e[0]))]
    height, width = mask.shape
    return {"classes": classes, "mask": {"format": "png", "width": width, "height": height, "data": png(mask)}}


def stated(answer_):
    """The mask an answer states, as an H x W uint8 tensor."""
    import numpy as np
    import torch
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(answer_["mask"]["data"])))
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())


def v2_outputs(masks, config):
    """The Open Inference Protocol outputs for the masks of a request's images."""
    n, width = len(masks), len(config.labels)
    return [{"name": "mask", "shape": [n], "datatype": "BYTES", "data": [png(m) for m in masks]},
            {"name": "fractions", "shape": [n, width], "datatype": "FP32", "data": [f for m in masks for f in fractions(m, config)]},
            {"name": "class_names", "shape": [width], "datatype": "BYTES", "data": list(config.labels)}]
