"""Detection, marforge's side: checking an archive's detections against the source model and scoring
them (see marforge/tasks/__init__.py for the parts every task has).

The source model (model definition + weights, torchvision's detection interface) runs in-process on
each image alone, as torchvision's `to_tensor` makes it (C x H x W in [0, 1] at the size it was
sent), and its detections are kept as the handler's answer says it keeps them (`score_threshold`,
`max_detections`). An image agrees when every detection on each side has one on the other with the
same label and an IoU of at least `MIN_IOU` (torchvision.ops.box_iou); their scores must be within
the format's tolerance. Labelled eval images (labels.json: {"boxes": [[x1, y1, x2, y2], ...],
"labels": [name, ...]} per image) are scored with COCO's mAP at IoU 0.5 and over 0.5:0.95
(torchmetrics' MeanAveragePrecision, on pycocotools).

Formats: eager and TorchScript (scripted); `UNAVAILABLE` says why the others are refused.
"""

from marforge import shipped
from marforge.archiving.variants import Tolerance
from marforge.archiving.weights import source_model
from marforge.errors import ArchiveError

MIN_IOU = 0.99
TOLERANCES = {fmt: Tolerance(1e-4, 1.0) for fmt in shipped.contract().formats_for("detection")}  # torchscript: torch.jit.script
UNAVAILABLE = ("a detector takes a list of images of their own sizes: the formats that trace one fixed-size batch "
               "(quantized, onnx) do not apply, and compile and cudagraphs have not been measured for detectors")


def gate_metric(task: str) -> tuple[str, str, str]:
    """(the metric a labelled rollout gate judges, its rules' stem: min_<stem>, max_<stem>_drop, its name)."""
    return "map_50", "map", "mAP@0.5"


def reference(mv, config, image_paths):
    """Per image, the source model's kept detections: [(label index, score, [x1, y1, x2, y2])]."""
    import torch
    from torchvision.transforms import functional

    image_io = shipped.module("image_io")
    model = source_model(mv)
    found = []
    with torch.inference_mode():
        for path in image_paths:
            out = model([functional.to_tensor(image_io.decode_image(path.read_bytes(), config))])
            out = out[1][0] if isinstance(out, tuple) else out[0]
            kept = sorted(((int(k), float(s), [float(v) for v in b]) for k, s, b in zip(out["labels"], out["scores"], out["boxes"])
                           if float(s) >= config.score_threshold), key=lambda d: -d[1])
            found.append(kept[:config.max_detections])
    return found


def _matched(said, source):
    """(whether the two lists of detections pair up one to one, the largest score difference of the pairs)."""
    import torch
    from torchvision.ops import box_iou

    if len(said) != len(source):
        return False, 0.0
    if not said:
        return True, 0.0
    ious = box_iou(torch.tensor([d["box"] for d in said]), torch.tensor([b for _, _, b in source]))
    free, worst = set(range(len(source))), 0.0
    for i, d in enumerate(said):
        j = max((j for j in free if source[j][0] == d["index"]), key=lambda j: float(ious[i, j]), default=None)
        if j is None or float(ious[i, j]) < MIN_IOU:
            return False, worst
        free.discard(j)
        worst = max(worst, abs(d["score"] - source[j][1]))
    return True, worst


def compare(mar_path, fmt, config, paths, bodies, expected):
    """Share of images whose detections match the source model's, and the largest score difference."""
    tolerance, worst, disagree = TOLERANCES[fmt], (0.0, None), []
    for path, body, source in zip(paths, bodies, expected):
        same, diff = _matched(body["detections"], source)
        if not same:
            disagree.append((path, body["detections"], source))
        if diff >= worst[0]:
            worst = (diff, path)
    agreement = 1 - len(disagree) / len(paths)
    if agreement < tolerance.agreement:
        path, said, source = disagree[0]
        raise ArchiveError(f"{mar_path}: {len(disagree)} of {len(paths)} images' detections differ from the source "
                           f"model's (same label and IoU >= {MIN_IOU}; {fmt} needs agreement >= {tolerance.agreement}); "
                           f"{path.name}: archive says {_named(said)}, source model says "
                           f"{_named([{'label': config.labels[k], 'box': b} for k, _, b in source])}")
    if worst[0] > tolerance.value:
        raise ArchiveError(f"{mar_path}: image {worst[1].name}: a detection's score differs from the source model's by "
                           f"{worst[0]:.2e} ({fmt} tolerance {tolerance.value})")
    return agreement, worst[0]


def _named(detections):
    return "[" + ", ".join(f"{d['label']} at {[round(v, 1) for v in d['box']]}" for d in detections) + "]" if detections else "nothing"


def quality(config, bodies, labels):
    """{"map_50", "map_50_95"} of the eval set's answers against its boxes (empty when not measurable)."""
    if not labels or any(label is None for label in labels):
        return {}
    import torch
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")
    index = {name: i for i, name in enumerate(config.labels)}
    preds = [{"boxes": torch.tensor([d["box"] for d in b["detections"]], dtype=torch.float32).reshape(-1, 4),
              "scores": torch.tensor([d["score"] for d in b["detections"]], dtype=torch.float32),
              "labels": torch.tensor([d["index"] for d in b["detections"]], dtype=torch.int64)} for b in bodies]
    truth = [{"boxes": torch.tensor(t["boxes"], dtype=torch.float32).reshape(-1, 4),
              "labels": torch.tensor([index[name] for name in t["labels"]], dtype=torch.int64)} for t in labels]
    metric.update(preds, truth)
    result = metric.compute()
    return {"map_50": round(float(result["map_50"]), 4), "map_50_95": round(float(result["map"]), 4)}


def decision(answer, config):
    """What an unlabelled rollout gate compares two versions' answers by: the sorted labels detected."""
    return sorted(d["label"] for d in answer["detections"])


def sample_summary(answer):
    """A sample's line in the verification record: how many detections, and the most confident."""
    detections = answer["detections"]
    return {"detections": len(detections), "top": detections[0] if detections else None}
