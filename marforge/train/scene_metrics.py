"""Held-out metrics of the scene detector and segmenter, computed by torchmetrics (never by hand).

- Detection: COCO-style mean average precision from torchmetrics' MeanAveragePrecision with its
  pycocotools backend (iou_type "bbox", boxes xyxy): `map_50` (mAP at IoU 0.5) and `map` (mAP over
  IoU 0.5:0.95), averaged over the classes (macro), each class's AP over every held-out scene.
- Segmentation: torchmetrics' MulticlassJaccardIndex over the 11 classes (background and the 10
  Fashion-MNIST classes), accumulated over every held-out pixel: `miou` is the mean of the classes'
  IoUs (the background's included, as PASCAL VOC counts it), `miou_items` the mean over the 10 item
  classes alone, `per_class_iou` each class's, plus `pixel_accuracy`.

Model inputs are made here too, so training, evaluation and the tests feed the models alike:
detection takes pixels / 255 in [0, 1] (the model normalises inside); segmentation takes the
contract's normalise of the pixels with the training scenes' mean and std.
"""

import torch

from marforge import shipped

EVAL_BATCH = 100
MAP_MAX_DETECTIONS = [1, 10, 100]  # COCO's, and so pycocotools'


def detection_images(images: torch.Tensor) -> list:
    """N x H x W uint8 scenes -> the detector's input: a list of 1 x H x W float tensors in [0, 1]."""
    return [image.unsqueeze(0).float() / 255.0 for image in images]


def detection_targets(scenes, indices=None) -> list:
    """torchvision detection targets of a SceneSet: boxes xyxy, labels 1..10 (class index + 1)."""
    picked = range(len(scenes)) if indices is None else indices
    return [{"boxes": scenes.boxes[i], "labels": scenes.labels[i] + 1} for i in picked]


def segmentation_input(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """N x H x W uint8 scenes -> N x 1 x H x W float32, the contract's normalise with mean and std."""
    return shipped.contract().normalise(images.unsqueeze(-1), [mean], [std])


@torch.no_grad()
def predict_detections(model, images: torch.Tensor) -> list:
    """The detector's answers (eval mode) for N x H x W uint8 scenes, in batches of EVAL_BATCH."""
    model.eval()
    answers: list = []
    for start in range(0, len(images), EVAL_BATCH):
        answers.extend(model(detection_images(images[start : start + EVAL_BATCH])))
    return answers


@torch.no_grad()
def predict_classes(model, x: torch.Tensor) -> torch.Tensor:
    """N x H x W int64: the segmenter's most likely class per pixel (eval mode), in batches."""
    model.eval()
    return torch.cat([model(x[i : i + EVAL_BATCH])["out"].argmax(1) for i in range(0, len(x), EVAL_BATCH)])


def detection_metrics(predictions: list, targets: list) -> dict:
    """{"map_50", "map", "map_75", "mar_100"} of the predictions against the targets (torchmetrics)."""
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools",
                                  max_detection_thresholds=MAP_MAX_DETECTIONS)
    metric.update([{k: p[k].detach() for k in ("boxes", "scores", "labels")} for p in predictions], targets)
    result = metric.compute()
    return {key: round(float(result[key]), 6) for key in ("map_50", "map", "map_75", "mar_100")}


def segmentation_metrics(predicted: torch.Tensor, target: torch.Tensor, num_classes: int) -> dict:
    """{"miou", "miou_items", "pixel_accuracy", "per_class_iou"} of predicted against target class maps."""
    from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

    # With deterministic algorithms on, torchmetrics counts with a pixels x classes^2 one-hot instead of
    # torch.bincount: tens of GB for a thousand scenes. bincount on the CPU is deterministic anyway.
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        miou = MulticlassJaccardIndex(num_classes=num_classes, average="macro")(predicted, target)
        per_class = MulticlassJaccardIndex(num_classes=num_classes, average="none")(predicted, target)
        accuracy = MulticlassAccuracy(num_classes=num_classes, average="micro")(predicted, target)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    return {
        "miou": round(float(miou), 6),
        "miou_items": round(float(per_class[1:].mean()), 6),
        "pixel_accuracy": round(float(accuracy), 6),
        "per_class_iou": [round(float(v), 6) for v in per_class],
    }
