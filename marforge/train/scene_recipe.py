"""Train the reference detector (fashiondet) and segmenter (fashionseg) on composed scenes, with provenance.

The scenes are composed from real Fashion-MNIST photos; the composition is synthetic
(marforge/train/scenes.py). Each epoch composes fresh training scenes from the train split (seed
`seed * 1000 + epoch`); the held-out scenes are composed once from the test split (HELD_OUT_SEED) and
scored by torchmetrics (marforge/train/scene_metrics.py). Training is seeded and runs with
deterministic algorithms on one thread (the machine is shared); AdamW with a cosine schedule.

    python -m marforge train fashiondet 1.0   # writes weights/fashiondet-1.0.pt and .json
    python -m marforge train --all            # every version with a train table (make weights)

A version's recipe is its train table in models.toml, with `dataset = "fashion-mnist-scenes"` and its
`task`; marforge/train/recipe.py hands such a version to `train_version`.
"""

import json
import time
from typing import Any

import torch
from torch.nn import functional as F

from marforge import files, shipped
from marforge.archiving import weights
from marforge.errors import MarforgeError
from marforge.train import datasets, recipe, scene_metrics, scenes

HELD_OUT_SCENES = 1000
HELD_OUT_SEED = 2026
DATASET = "fashion-mnist"
LABELS = ["__background__", *datasets.FASHION_LABELS]  # index = the models' class index
DETECTOR = "model_defs/scene_detector.py"
SEGMENTER = "model_defs/scene_segmenter.py"
DATASET_NAME = "fashion-mnist-scenes"  # what a registry train table names for these recipes
METRICS = {"detection": ("map_50", "min_map"), "segmentation": ("miou", "min_miou")}  # task -> (metric, its floor's key)


def spec_of(project, mv) -> dict[str, Any]:
    """The version's recipe: its registry train table (task, epochs, scenes_per_epoch, batch_size, lr,
    weight_decay, seed and its floor, min_map or min_miou), with its model definition and metric."""
    spec = dict(mv.train)
    metric, floor_key = METRICS[spec["task"]]
    return {**spec, "model_def": project.relative(mv.model_def), "metric": metric, "floor": spec.get(floor_key, 0.0)}


def held_out(data) -> scenes.SceneSet:
    """The held-out scenes every version is scored on: HELD_OUT_SCENES from the test split."""
    return scenes.compose(data, "test", HELD_OUT_SCENES, HELD_OUT_SEED)


def _detection_step(model, batch, _norm):
    losses = model(scene_metrics.detection_images(batch.images), scene_metrics.detection_targets(batch))
    return sum(losses.values())


def _segmentation_step(model, batch, norm):
    out = model(scene_metrics.segmentation_input(batch.images, *norm))["out"]
    return F.cross_entropy(out, batch.class_maps())


def _subset(scene_set, idx):
    picked = idx.tolist()
    return scenes.SceneSet(scene_set.split, scene_set.seed, scene_set.images[idx], scene_set.instances[idx],
                           [scene_set.boxes[i] for i in picked], [scene_set.labels[i] for i in picked],
                           [scene_set.sources[i] for i in picked], [scene_set.placements[i] for i in picked])


def fit(model, data, spec, norm, log):
    """Train `model` by the recipe `spec` on fresh train-split scenes each epoch; returns seconds taken."""
    step = _detection_step if spec["task"] == "detection" else _segmentation_step
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec["lr"], weight_decay=spec["weight_decay"])
    steps = spec["epochs"] * -(-spec["scenes_per_epoch"] // spec["batch_size"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=spec["lr"], total_steps=steps, pct_start=0.1)
    started = time.perf_counter()
    for epoch in range(1, spec["epochs"] + 1):
        train_scenes = scenes.compose(data, "train", spec["scenes_per_epoch"], spec["seed"] * 1000 + epoch)
        order = torch.randperm(len(train_scenes))
        model.train()
        total = 0.0
        for start in range(0, len(order), spec["batch_size"]):
            loss = step(model, _subset(train_scenes, order[start : start + spec["batch_size"]]), norm)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item()
        log(f"epoch {epoch}/{spec['epochs']}: mean loss {total / -(-len(order) // spec['batch_size']):.4f}  "
            f"{time.perf_counter() - started:.0f}s")
    return time.perf_counter() - started


def evaluate(model, task, test, norm) -> dict:
    """The held-out metrics of a trained model (scene_metrics)."""
    if task == "detection":
        predictions = scene_metrics.predict_detections(model, test.images)
        return scene_metrics.detection_metrics(predictions, scene_metrics.detection_targets(test))
    predicted = scene_metrics.predict_classes(model, scene_metrics.segmentation_input(test.images, *norm))
    return scene_metrics.segmentation_metrics(predicted, test.class_maps(), len(LABELS))


def _preprocess(task, norm):
    """Detection: the model takes pixels / 255 and normalises inside (mean 0, std 1 outside);
    segmentation: the handler normalises with the training scenes' mean and std."""
    mean, std = (0.0, 1.0) if task == "detection" else norm
    crop = "keep" if task == "detection" else "none"  # a detector takes each image at its own size
    return shipped.contract().preprocess_metadata((scenes.CANVAS, scenes.CANVAS), "grayscale", [mean], [std], crop=crop)


def _dataset_entry(data, spec, test):
    return {
        "name": "fashion-mnist-scenes",
        "composition": scenes.PROVENANCE,
        "source": data.source,
        "train_split": "train (60,000 photos)", "test_split": "t10k (10,000 photos)",
        "train_size": spec["epochs"] * spec["scenes_per_epoch"], "test_size": len(test),
        "test_items": sum(len(labels) for labels in test.labels),
        "held_out_seed": HELD_OUT_SEED, "canvas": [scenes.CANVAS, scenes.CANVAS],
        "max_items": scenes.MAX_ITEMS, "item_sides": list(scenes.ITEM_SIDES), "threshold": scenes.THRESHOLD,
    }


def train_version(project, mv, log=print) -> dict:
    """Train one registry version by its train table (`spec_of`), write weights/<name>-<version>.pt and
    .json; the metadata. Raises past the write when the held-out metric is below the table's floor."""
    spec, name, version = spec_of(project, mv), mv.name, mv.version
    torch.set_num_threads(1)
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        recipe.seed_everything(spec["seed"])
        data = datasets.load(DATASET)
        norm = recipe.normalizer(scenes.compose(data, "train", spec["scenes_per_epoch"], spec["seed"] * 1000).images)
        model_def = project.root / spec["model_def"]
        model_class = weights.model_class(model_def)
        model = model_class()
        log(f"{name} {version}: {model_class.__name__}, {spec['epochs']} x {spec['scenes_per_epoch']} scenes")
        seconds = fit(model, data, spec, norm, lambda line: log(f"{name} {version} {line}"))
        test = held_out(data)
        metrics = evaluate(model, spec["task"], test, norm)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    path = project.weights_dir / f"{name}-{version}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    metadata = {
        "name": name, "version": version, "task": spec["task"], "description": scenes.PROVENANCE,
        "model_def": spec["model_def"], "model_class": model_class.__name__,
        "sha256": files.sha256(path), "file_size": path.stat().st_size,
        "dataset": _dataset_entry(data, spec, test), "labels": LABELS,
        "preprocess": _preprocess(spec["task"], norm), "metrics": metrics,
        "recipe": {**spec, "optimizer": "adamw", "schedule": "onecycle", "threads": 1},
        "training_seconds": round(seconds, 1),
        "command": f"python -m marforge train {name} {version}",
        "torch_version": torch.__version__,
        "created": files.utc_now(),
    }
    path.with_suffix(".json").write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    log(f"{name} {version}: {metrics} -> {path}")
    if metrics[spec["metric"]] < spec["floor"]:
        raise MarforgeError(f"{name} {version}: held-out {spec['metric']} {metrics[spec['metric']]:.4f} "
                            f"is below its floor {spec['floor']}", "change its train table in models.toml and train again")
    return metadata
