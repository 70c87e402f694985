"""Export a scene model's sample and eval images (samples/<name>/, eval/<name>/): held-out scenes
composed from real Fashion-MNIST photos of the test split (the composition is synthetic,
marforge/train/scenes.py), with their true boxes or masks.

    python -m marforge samples fashiondet      # make weights runs it after training

The eval set is the first EVAL_COUNT of the held-out scenes every version is scored on
(scene_recipe.held_out), not cherry-picked. The samples are the first SAMPLE_COUNT scenes after
them, some resized (RESIZED) so that a batch holds images of several sizes and orientations, their
truth resized with them. labels.json holds per image, for a detector, {"boxes": [[x1, y1, x2, y2],
...], "labels": [name, ...]}; for a segmenter {"mask": "<base64 8-bit PNG of class indexes>"}, the
encoding of the answers (handlers/segmentation.py).
"""

import base64
import io

import torch
from PIL import Image

from marforge import labelled
from marforge.train import datasets, scene_recipe

EVAL_COUNT = 200
SAMPLE_COUNT = 6
RESIZED = {4: (150, 110), 5: (64, 128)}  # sample number -> (width, height) it is resized to


def _truth(task, scenes, i, size):
    """The labels.json entry of scene i at `size` (width, height)."""
    height, width = scenes.images[i].shape
    if task == "detection":
        scale = torch.tensor([size[0] / width, size[1] / height] * 2)
        names = ["__background__", *datasets.FASHION_LABELS]
        return {"boxes": [[round(v, 3) for v in (box * scale).tolist()] for box in scenes.boxes[i]],
                "labels": [names[int(label) + 1] for label in scenes.labels[i]]}
    mask = Image.fromarray(scenes.class_maps()[i].to(torch.uint8).numpy(), "L")
    buffer = io.BytesIO()
    (mask if mask.size == size else mask.resize(size, Image.Resampling.NEAREST)).save(buffer, format="PNG")
    return {"mask": base64.b64encode(buffer.getvalue()).decode()}


def _write(folder, task, scenes, indices, sizes):
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    mapping = {}
    for i, size in zip(indices, sizes):
        image = Image.fromarray(scenes.images[i].numpy(), "L")
        name = f"scene-{i:04d}.png" if image.size == size else f"scene-{i:04d}-{size[0]}x{size[1]}.png"
        (image if image.size == size else image.resize(size, Image.Resampling.BILINEAR)).save(folder / name)
        mapping[name] = _truth(task, scenes, i, size)
    labelled.write(folder, mapping)
    return mapping


def export(model, task, log=print):
    """Write `model`'s eval set and samples for its `task` ("detection" or "segmentation"); returns
    (samples, eval images) as file -> truth."""
    scenes = scene_recipe.held_out(datasets.load(scene_recipe.DATASET))
    canvas = tuple(scenes.images.shape[-1:-3:-1])
    evals = _write(model.eval_dir, task, scenes, range(EVAL_COUNT), [canvas] * EVAL_COUNT)
    chosen = range(EVAL_COUNT, EVAL_COUNT + SAMPLE_COUNT)
    folder = next(iter(model.versions.values())).samples  # samples/<name>/, shared by the versions
    samples = _write(folder, task, scenes, chosen, [RESIZED.get(n, canvas) for n in range(SAMPLE_COUNT)])
    log(f"{model.name}: {len(samples)} sample scenes in {folder}/, {len(evals)} eval scenes in {model.eval_dir}/ "
        "(composed from real Fashion-MNIST test photos; the composition is synthetic)")
    return samples, evals
