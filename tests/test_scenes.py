"""The composed scenes (real Fashion-MNIST photos, synthetic composition) and the committed fashiondet and
fashionseg weights: boxes and masks tell the truth, splits are kept apart, compositions repeat, and
the weights reach their recorded held-out metrics. Needs dataset-fashion-mnist; no TorchServe."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou, masks_to_boxes

from marforge import files
from marforge.archiving import weights
from marforge.project import Project
from marforge.train import datasets, scene_metrics, scene_recipe, scenes

CHECK_SCENES = 250  # the first 250 of the recorded run's held-out scenes (a composition's prefix is the same)
METRIC_TOLERANCE = 0.05  # a metric on those vs the one recorded on all HELD_OUT_SCENES, same library
VERSIONS = sorted(scene_recipe.RECIPES)


@pytest.fixture(scope="module")
def data():
    return datasets.load("fashion-mnist")


@pytest.fixture(scope="module")
def composed(data):
    return {split: scenes.compose(data, split, 300, seed=7) for split in scenes.SPLITS}


def _full_mask(photos, source, placement):
    """An item's own mask before anything covered it, rebuilt from its photo and placement."""
    top, left, side = (int(v) for v in placement)
    resized = np.asarray(Image.fromarray(photos[int(source)].numpy()).resize((side, side), Image.Resampling.BILINEAR))
    canvas = np.zeros((scenes.CANVAS, scenes.CANVAS), dtype=np.uint8)
    canvas[top : top + side, left : left + side] = resized
    return torch.from_numpy(canvas)


@pytest.mark.parametrize("split", scenes.SPLITS)
def test_boxes_are_tight_around_masks(composed, split):
    scene_set = composed[split]
    for i in range(len(scene_set)):
        masks = scene_set.masks(i)
        assert masks.flatten(1).any(1).all(), f"scene {i}: an item with no visible pixel"
        expected = masks_to_boxes(masks) + torch.tensor([0.0, 0.0, 1.0, 1.0])  # pixel edges
        assert torch.equal(scene_set.boxes[i], expected), f"scene {i}"


@pytest.mark.parametrize("split", scenes.SPLITS)
def test_masks_are_what_the_scene_shows_under_occlusion(data, composed, split):
    """Rebuilt from each item's own photo (of the named split) and placement: every visible mask is
    the item's pixels above the threshold less those of later items, shows that photo's pixels, and
    keeps at least MIN_VISIBLE of them; and some items really are occluded."""
    scene_set = composed[split]
    photos = data.train_images if split == "train" else data.test_images
    occluded = 0
    for i in range(len(scene_set)):
        image, masks = scene_set.images[i], scene_set.masks(i)
        assert torch.equal(image > 0, masks.any(0)), f"scene {i}: pixels drawn outside every mask"
        full = [_full_mask(photos, s, p) for s, p in zip(scene_set.sources[i], scene_set.placements[i], strict=True)]
        for j, own in enumerate(full):
            expected = own > scenes.THRESHOLD
            for later in full[j + 1 :]:
                expected &= ~(later > scenes.THRESHOLD)
            assert torch.equal(masks[j], expected), f"scene {i} item {j}"
            assert torch.equal(image[expected], own[expected]), f"scene {i} item {j}: not its photo's pixels"
            assert expected.sum() >= scenes.MIN_VISIBLE * (own > scenes.THRESHOLD).sum()
            occluded += int(expected.sum() < (own > scenes.THRESHOLD).sum())
        labels = (data.train_labels if split == "train" else data.test_labels)[scene_set.sources[i]]
        assert torch.equal(scene_set.labels[i], labels)
    assert occluded >= 10, f"only {occluded} occluded items in {len(scene_set)} scenes: occlusion is not exercised"


def test_compositions_repeat_by_seed_and_differ_between_seeds(data, composed):
    again = scenes.compose(data, "test", 300, seed=7)
    assert torch.equal(again.images, composed["test"].images)
    assert torch.equal(again.instances, composed["test"].instances)
    assert all(torch.equal(a, b) for a, b in zip(again.boxes, composed["test"].boxes, strict=True))
    other = scenes.compose(data, "test", 300, seed=8)
    assert not torch.equal(other.images, again.images)


def test_class_maps_follow_masks_and_labels(composed):
    scene_set = composed["train"]
    maps = scene_set.class_maps()
    for i in range(0, len(scene_set), 17):
        for mask, label in zip(scene_set.masks(i), scene_set.labels[i], strict=True):
            assert (maps[i][mask] == label + 1).all()
        assert (maps[i][~scene_set.masks(i).any(0)] == 0).all()


def test_compose_refuses_an_unknown_split(data):
    with pytest.raises(ValueError, match="split must be one of"):
        scenes.compose(data, "validation", 1, seed=0)


@pytest.fixture(scope="module")
def held_out(data):
    """The first CHECK_SCENES held-out scenes that training scored its versions on."""
    return scenes.compose(data, "test", CHECK_SCENES, scene_recipe.HELD_OUT_SEED)


def test_a_composition_starts_with_the_scenes_of_a_shorter_one(data, held_out):
    longer = scenes.compose(data, "test", CHECK_SCENES + 5, scene_recipe.HELD_OUT_SEED)
    assert torch.equal(longer.images[:CHECK_SCENES], held_out.images)


def _load(key):
    project = Project.locate()
    name, version = key
    path = project.weights_dir / f"{name}-{version}.pt"
    metadata = json.loads(path.with_suffix(".json").read_text())
    assert metadata["sha256"] == files.sha256(path) and metadata["file_size"] == path.stat().st_size
    model = weights.build_model(project.root / scene_recipe.RECIPES[key]["model_def"], path)
    return model, metadata


@pytest.mark.parametrize("key", VERSIONS, ids=[f"{n}-{v}" for n, v in VERSIONS])
def test_committed_weights_reach_their_recorded_metrics(held_out, key):
    torch.set_num_threads(1)
    model, metadata = _load(key)
    spec = scene_recipe.RECIPES[key]
    assert metadata["labels"] == scene_recipe.LABELS
    assert metadata["description"] == scenes.PROVENANCE == metadata["dataset"]["composition"]
    assert metadata["dataset"]["test_size"] == scene_recipe.HELD_OUT_SCENES
    assert metadata["dataset"]["held_out_seed"] == scene_recipe.HELD_OUT_SEED
    norm = (metadata["preprocess"]["mean"][0], metadata["preprocess"]["std"][0])
    metrics = scene_recipe.evaluate(model, spec["task"], held_out, norm)
    for name in ("map_50", "map") if spec["task"] == "detection" else ("miou", "miou_items", "pixel_accuracy"):
        assert metrics[name] == pytest.approx(metadata["metrics"][name], abs=METRIC_TOLERANCE), name
    assert metadata["metrics"][spec["metric"]] >= spec["floor"]
    assert metrics[spec["metric"]] >= spec["floor"] - METRIC_TOLERANCE


def test_versions_2_are_at_least_as_good_as_1():
    for name in ("fashiondet", "fashionseg"):
        first, second = (_load((name, v))[1] for v in ("1.0", "2.0"))
        metric = scene_recipe.RECIPES[(name, "2.0")]["metric"]
        assert second["metrics"][metric] >= first["metrics"][metric]


def test_detector_answers_in_the_pixels_of_the_image_as_sent(held_out):
    """A scene sent at twice its size gives the same detections, at twice the coordinates."""
    model, _ = _load(("fashiondet", "2.0"))
    small = held_out.images[:20]
    large = torch.nn.functional.interpolate(small.unsqueeze(1).float(), scale_factor=2.0, mode="nearest")
    answers = scene_metrics.predict_detections(model, small)
    answers_large = scene_metrics.predict_detections(model, large.squeeze(1).to(torch.uint8))
    for a, b in zip(answers, answers_large, strict=True):
        keep_a, keep_b = a["scores"] > 0.5, b["scores"] > 0.5
        assert keep_a.sum() == keep_b.sum()
        if keep_a.any():
            iou = box_iou(a["boxes"][keep_a] * 2, b["boxes"][keep_b])
            assert (iou.max(1).values > 0.9).all()


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning",
                            "ignore:FCOS always returns a \\(Losses, Detections\\) tuple in scripting:UserWarning")
@pytest.mark.parametrize("key", [("fashiondet", "1.0"), ("fashionseg", "1.0")], ids=["detector", "segmenter"])
def test_models_script_and_match_eager(held_out, key):
    model, metadata = _load(key)
    scripted = torch.jit.script(model)
    image = held_out.images[:1, :80, :90]  # not the canvas size: any size works
    if metadata["task"] == "detection":
        (eager,) = scene_metrics.predict_detections(model, image)
        _, (script,) = scripted(scene_metrics.detection_images(image))  # scripted FCOS answers (losses, detections)
        assert torch.allclose(eager["boxes"], script["boxes"], atol=1e-4) and torch.equal(eager["labels"], script["labels"])
    else:
        x = scene_metrics.segmentation_input(image, metadata["preprocess"]["mean"][0], metadata["preprocess"]["std"][0])
        with torch.no_grad():
            assert scripted(x)["out"].shape == (1, len(scene_recipe.LABELS), 80, 90)
            assert torch.allclose(model(x)["out"], scripted(x)["out"], atol=1e-4)

