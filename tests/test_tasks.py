"""The detection and segmentation tasks of the handler (handlers/detection.py, segmentation.py), on
outputs of torchvision's interfaces, and the contract's settings for them."""

import base64
import io

import contract
import detection
import numpy as np
import pytest
import segmentation
import torch
from PIL import Image

LABELS = ["__background__", "Bag", "Sneaker"]


def config(task, **overrides):
    return contract.HandlerConfig.from_dict({"image_size": [96, 96], "color": "grayscale", "mean": [0.0], "std": [1.0],
                                             "labels": LABELS, "task": task,
                                             **({"crop": "keep"} if task == "detection" else {}), **overrides})


def detector_output(*rows):
    """torchvision's per-image detection dict from (label, score, box) rows, in no particular order."""
    return {"boxes": torch.tensor([r[2] for r in rows], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([r[0] for r in rows], dtype=torch.int64),
            "scores": torch.tensor([r[1] for r in rows], dtype=torch.float32)}


def test_detections_are_kept_by_score_threshold_and_count_most_confident_first():
    cfg = config("detection", score_threshold=0.3, max_detections=2)
    out = detector_output((1, 0.4, [1, 2, 30, 40]), (2, 0.9, [50, 50, 90, 95]), (1, 0.2, [0, 0, 5, 5]), (2, 0.35, [3, 3, 9, 9]))
    [kept, empty] = detection.results([out, detector_output()], cfg, [(96, 96), (200, 120)])
    assert [(d["label"], d["index"], round(d["score"], 2)) for d in kept] == [("Sneaker", 2, 0.9), ("Bag", 1, 0.4)]
    assert kept[0]["box"] == [50.0, 50.0, 90.0, 95.0] and empty == []
    assert detection.answer(kept, cfg) == {"detections": kept} and detection.stated({"detections": kept}) == kept
    scripted = detection.results(detection.per_image(({}, [out])), cfg, [(96, 96)])  # (losses, detections)
    assert scripted == [kept]


def test_detection_v2_outputs_have_one_row_per_detection_of_the_request():
    cfg = config("detection")
    results = detection.results([detector_output((1, 0.8, [1, 2, 3, 4])), detector_output(),
                                 detector_output((2, 0.7, [5, 6, 7, 8]), (1, 0.6, [0, 0, 9, 9]))], cfg, [(96, 96)] * 3)
    outputs = {o["name"]: o for o in detection.v2_outputs(results, cfg)}
    assert outputs["image_index"]["data"] == [0, 2, 2] and outputs["boxes"]["shape"] == [3, 4]
    assert outputs["boxes"]["data"][4:8] == [5.0, 6.0, 7.0, 8.0] and outputs["classes"]["data"] == [1, 2, 1]
    assert outputs["class_names"]["data"] == ["Bag", "Sneaker", "Bag"] and outputs["scores"]["shape"] == [3]


def test_a_segmentation_mask_is_at_the_sent_size_and_travels_as_a_small_png():
    cfg = config("segmentation")
    logits = torch.zeros(2, 3, 96, 96)
    logits[:, 1, :48, :] = 5.0  # the top half: Bag
    logits[1, 2, :, 48:] = 9.0  # image 2's right half: Sneaker
    masks = segmentation.results({"out": logits, "aux": logits}, cfg, [(96, 96), (300, 150)])
    assert masks[0].shape == (96, 96) and masks[1].shape == (150, 300) and masks[0].dtype == torch.uint8
    assert torch.equal(masks[0][:48], torch.ones(48, 96, dtype=torch.uint8)) and int(masks[0][60, 10]) == 0
    answer = segmentation.answer(masks[1], cfg)
    assert [c["label"] for c in answer["classes"]] == ["Sneaker", "Bag", "__background__"]
    assert sum(c["fraction"] for c in answer["classes"]) == pytest.approx(1.0)
    assert (answer["mask"]["width"], answer["mask"]["height"], answer["mask"]["format"]) == (300, 150, "png")
    assert torch.equal(segmentation.stated(answer), masks[1])
    png = Image.open(io.BytesIO(base64.b64decode(answer["mask"]["data"])))
    assert png.mode == "L" and np.asarray(png)[0, 299] == 2
    assert len(answer["mask"]["data"]) < 2000  # the raw scores would be 3 x 150 x 300 floats
    outputs = {o["name"]: o for o in segmentation.v2_outputs(masks, cfg)}
    assert outputs["mask"]["shape"] == [2] and outputs["fractions"]["shape"] == [2, 3]
    assert outputs["fractions"]["data"][:3] == pytest.approx([0.5, 0.5, 0.0])


def test_keep_takes_each_image_at_its_own_size_and_only_detection_and_segmentation_are_answered_so():
    cfg = config("detection")
    image = Image.new("L", (130, 70), 255)
    [view] = contract.fit(image, cfg)
    assert view.size == (130, 70) and cfg.input_size is None
    assert contract.crop_box((130, 70), cfg) == (0, 0, 130, 70)
    assert contract.to_input(image, cfg).shape == (1, 70, 130) and float(contract.to_input(image, cfg).max()) == 1.0
    assert config("segmentation").input_size == (96, 96)
    assert contract.TASK_MODULES["detection"] == "detection" and not detection.EXPLAINS and not segmentation.EXPLAINS
