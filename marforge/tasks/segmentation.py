"""Segmentation, marforge's side: checking an archive's masks against the source model and scoring
them (see marforge/tasks/__init__.py for the parts every task has).

The source model (model definition + weights, torchvision's segmentation interface) runs in-process
on each image alone, through torchvision's own transforms (Resize to the input size unless the
geometry is "keep", ToTensor, Normalize); its class scores are resized bilinearly to the image's size and each pixel takes the
most likely class. An archive's mask (decoded from the answer's PNG) must agree with that on at
least 1 - tolerance of each image's pixels, on every image. Labelled eval images (labels.json:
{"mask": "<base64 8-bit PNG of class indexes>"} per image, the answers' own encoding) are scored
with the mean IoU over the classes (torchmetrics' MulticlassJaccardIndex).

Formats: eager and TorchScript (scripted); `UNAVAILABLE` says why the others are refused.
"""

from marforge import shipped
from marforge.archiving.variants import Tolerance
from marforge.archiving.weights import source_model
from marforge.errors import ArchiveError

# value: the largest share of an image's pixels whose class may differ; agreement: the share of images within it
TOLERANCES = {fmt: Tolerance(0.001, 1.0) for fmt in shipped.contract().formats_for("segmentation")}  # torchscript: torch.jit.script
UNAVAILABLE = "the other formats have not been measured for segmenters yet (their masks must agree pixel by pixel)"


def gate_metric(task: str) -> tuple[str, str, str]:
    """(the metric a labelled rollout gate judges, its rules' stem: min_<stem>, max_<stem>_drop, its name)."""
    return "miou", "miou", "mIoU"


def reference(mv, config, image_paths):
    """Per image, the source model's mask: H x W class indexes at the image's size."""
    import torch
    from torch.nn import functional
    from torchvision import transforms

    image_io = shipped.module("image_io")
    resize = [] if config.crop == "keep" else [transforms.Resize(list(config.image_size))]  # keep: at its own size
    prepare = transforms.Compose([*resize, transforms.ToTensor(), transforms.Normalize(config.mean, config.std)])
    model = source_model(mv)
    masks = []
    with torch.inference_mode():
        for path in image_paths:
            image = image_io.decode_image(path.read_bytes(), config)
            out = model(prepare(image).unsqueeze(0))
            scores = out["out"] if isinstance(out, dict) else out
            scores = functional.interpolate(scores.float(), size=(image.height, image.width), mode="bilinear",
                                            align_corners=False)
            masks.append(scores[0].argmax(0).to(torch.uint8))
    return masks


def compare(mar_path, fmt, config, paths, bodies, expected):
    """Share of images whose masks agree with the source model's within the tolerance, and the largest
    share of one image's pixels that differ."""
    tolerance, task = TOLERANCES[fmt], shipped.module("segmentation")
    differing = []
    for path, body, source in zip(paths, bodies, expected):
        said = task.stated(body)
        share = 1.0 if said.shape != source.shape else float((said != source).double().mean())
        differing.append((share, path))
    agreement = sum(share <= tolerance.value for share, _ in differing) / len(paths)
    worst, path = max(differing, key=lambda d: d[0])
    if agreement < tolerance.agreement:
        raise ArchiveError(f"{mar_path}: image {path.name}: {worst:.4%} of its mask's pixels differ from the source "
                           f"model's ({fmt} allows {tolerance.value:.2%} per image)")
    return agreement, worst


def quality(config, bodies, labels):
    """{"miou"} of the eval set's masks against the true ones: the IoU of each class over all the eval
    set's pixels, averaged over the classes, the background included (torchmetrics'
    MulticlassJaccardIndex, macro); empty when not measurable."""
    if not labels or any(label is None for label in labels):
        return {}
    from torchmetrics.classification import MulticlassJaccardIndex

    task = shipped.module("segmentation")
    metric = MulticlassJaccardIndex(num_classes=len(config.labels), average="macro")
    for body, truth in zip(bodies, labels):
        metric.update(task.stated(body).long().flatten(), task.stated({"mask": {"data": truth["mask"]}}).long().flatten())
    return {"miou": round(float(metric.compute()), 4)}


def decision(answer, config):
    """What an unlabelled rollout gate compares two versions' answers by: the sorted classes present."""
    return sorted(c["label"] for c in answer["classes"])


def sample_summary(answer):
    """A sample's line in the verification record: its two largest classes."""
    return {"classes": answer["classes"][:2]}
