"""The contract's preprocessing (handlers/contract.py) against torchvision's own transforms, and its
handler settings for models trained elsewhere: resize, crops, multi-label outputs."""

import io

import classification
import contract
import numpy as np
import protocols
import pytest
import torch
from PIL import Image
from torchvision import transforms

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
SECTION = {"image_size": [224, 224], "color": "rgb", **IMAGENET, "labels": [f"l{i}" for i in range(14)]}


def config(**changes):
    return contract.HandlerConfig.from_dict({**SECTION, **changes})


def picture(width, height, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


TORCHVISION = transforms.Compose([transforms.ToTensor(), transforms.Normalize(IMAGENET["mean"], IMAGENET["std"])])


@pytest.mark.parametrize("size", [(300, 300), (300, 380), (401, 257), (256, 256)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_ten_crop_equals_torchvisions_resize_and_tencrop(size):
    image = picture(*size)
    ours = contract.to_input(image, config(resize=256, crop="ten"))
    theirs = torch.stack([TORCHVISION(c) for c in transforms.TenCrop(224)(transforms.Resize(256)(image))])
    assert ours.shape == (10, 3, 224, 224)
    assert (ours - theirs).abs().max() <= 1e-6


@pytest.mark.parametrize("size", [(300, 300), (300, 380), (401, 257)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_center_crop_and_plain_resize_equal_torchvisions(size):
    image = picture(*size, seed=1)
    center = contract.to_input(image, config(resize=256, crop="center"))
    assert (center - TORCHVISION(transforms.CenterCrop(224)(transforms.Resize(256)(image)))).abs().max() <= 1e-6
    plain = contract.to_input(image, config())
    assert (plain - TORCHVISION(transforms.Resize([224, 224])(image))).abs().max() <= 1e-6


def test_the_mirrored_five_are_crops_of_the_whole_mirrored_image():
    image = picture(300, 380, seed=2)
    views = contract.fit(image, config(resize=256, crop="ten"))
    mirrored = contract.fit(image.transpose(Image.FLIP_LEFT_RIGHT), config(resize=256, crop="ten"))
    assert [np.asarray(v).tolist() for v in views[5:]] == [np.asarray(v).tolist() for v in mirrored[:5]]
    assert np.array_equal(np.asarray(views[5]), np.asarray(views[1].transpose(Image.FLIP_LEFT_RIGHT)))


def test_a_grayscale_radiograph_becomes_three_equal_channels():
    gray = Image.fromarray(np.arange(300 * 280, dtype=np.uint32).reshape(280, 300).astype(np.uint8), "L")
    buffer = io.BytesIO()
    gray.save(buffer, format="PNG")
    tensor = protocols.prepare({"body": buffer.getvalue()}, config(resize=256, crop="center"))
    pixels = tensor * torch.tensor(IMAGENET["std"]).view(3, 1, 1) + torch.tensor(IMAGENET["mean"]).view(3, 1, 1)
    assert torch.allclose(pixels[0], pixels[1], atol=1e-6) and torch.allclose(pixels[1], pixels[2], atol=1e-6)


@pytest.mark.parametrize("size, box", [((512, 512), (32.0, 32.0, 480.0, 480.0)), ((300, 600), (18.75, 168.75, 281.25, 431.25)),
                                       ((1024, 512), (288.0, 32.0, 736.0, 480.0))])
def test_the_crop_box_is_where_the_center_view_lies_in_the_original(size, box):
    assert contract.crop_box(size, config(resize=256, crop="center")) == pytest.approx(box, abs=0.1)
    assert contract.crop_box(size, config()) == (0, 0, *size)


@pytest.mark.parametrize("changes, message", [
    ({"crop": "five"}, "handler crop must be one of none, center, ten, keep, not 'five'"),
    ({"crop": "ten"}, "handler crop 'ten' needs resize: the shorter side's length before cropping, at least the crop's 224"),
    ({"crop": "center", "resize": 200}, "handler crop 'center' needs resize: the shorter side's length before cropping, "
                                        "at least the crop's 224"),
    ({"resize": 256}, "handler resize (of the shorter side) needs a crop (center or ten): without one the model would "
                      "get inputs of varying size"),
    ({"task": "captioning"}, "handler task must be one of multiclass, multilabel, detection, segmentation, not 'captioning'"),
    ({"task": "detection", "score_threshold": 1.5}, "handler score_threshold must be a score from 0 to 1, not 1.5"),
    ({"task": "segmentation", "labels": [str(i) for i in range(300)]},
     "a segmentation model may have at most 256 classes (its mask is 8-bit), not 300"),
    ({"crop": "keep", "resize": 256}, "handler resize (of the shorter side) needs a crop (center or ten): without one "
                                      "the model would get inputs of varying size"),
    ({"task": "multilabel", "activation": "softmax"}, "a multilabel model's activation must be one of sigmoid, none, "
                                                      "not 'softmax'"),
    ({"thresholds": [0.5] * 14}, "handler thresholds apply to multilabel models only"),
    ({"task": "multilabel", "thresholds": [0.5] * 13}, "handler thresholds need one probability (0 to 1) per label (14)"),
])
def test_handler_settings_that_cannot_work_are_refused_saying_why(changes, message):
    with pytest.raises(ValueError) as caught:
        config(**changes)
    assert str(caught.value) == message


def test_activations_and_defaults_follow_the_task():
    assert config().activation == "softmax" and config(task="multilabel").activation == "sigmoid"
    logits = torch.tensor([[0.0, 2.0, -1.0] + [0.0] * 11])
    assert torch.allclose(contract.activate(logits, config(task="multilabel")), torch.sigmoid(logits))
    assert torch.allclose(contract.activate(logits, config()), torch.softmax(logits, dim=1))
    assert torch.equal(contract.activate(logits, config(task="multilabel", activation="none")), logits)


def test_registry_thresholds_become_one_per_label():
    metadata = {"preprocess": {k: SECTION[k] for k in ("image_size", "color", "mean", "std")}, "labels": SECTION["labels"],
                "task": "multilabel"}
    section = contract.handler_section(metadata, {"thresholds": {"l3": 0.2, "l13": 0.9}})
    assert section["thresholds"] == [0.5, 0.5, 0.5, 0.2] + [0.5] * 9 + [0.9]
    assert contract.handler_section(metadata, {"thresholds": 0.3})["thresholds"] == [0.3] * 14
    with pytest.raises(ValueError, match="thresholds name labels the model does not have: Hernia"):
        contract.handler_section(metadata, {"thresholds": {"Hernia": 0.3}})


def test_a_multilabel_answer_judges_every_label_in_model_order():
    cfg = config(task="multilabel", thresholds=[0.5] * 13 + [0.9])
    probabilities = torch.tensor([0.1, 0.7, 0.55] + [0.0] * 10 + [0.8])
    answer = classification.answer(probabilities, cfg)
    assert [p["label"] for p in answer["predictions"]] == SECTION["labels"]
    assert answer["predictions"][13] == {"label": "l13", "index": 13, "probability": pytest.approx(0.8),
                                         "threshold": 0.9, "positive": False}
    assert [(p["label"], p["index"]) for p in answer["positive"]] == [("l1", 1), ("l2", 2)]
    assert list(classification.answer(probabilities, config())) == ["predictions"]  # multiclass answers as before
