"""Export each trained model's sample and eval images (samples/<name>/, eval/<name>/) from its test split.

    python -m marforge samples      # make weights runs it after training

Samples are the first test images of different classes that every version of the model gets right
(the README's and the tests' examples); the eval set is the first EVAL_COUNT test images, not
cherry-picked (verification and the rollout gate use it).
"""

import re

import torch
from PIL import Image

from marforge import labelled
from marforge.archiving import weights
from marforge.errors import DataError
from marforge.train import datasets
from marforge.train.recipe import model_input, score

SAMPLE_COUNT = 4  # sample images per model, each of a different class
EVAL_COUNT = 300  # the first test images per model


def slug(label):
    """A file-name-safe form of a label: "T-shirt/top" -> "t-shirt-top"."""
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def write_images(out_dir, images, labels, indices, names):
    """Write test images `indices` as 8-bit grayscale PNGs plus labels.json; replaces old PNGs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.png"):
        old.unlink()
    mapping = {}
    for i in indices:
        label = names[int(labels[i])]
        file_name = f"{i:05d}-{slug(label)}.png"
        Image.fromarray(images[i].numpy()).save(out_dir / file_name)
        mapping[file_name] = label
    labelled.write(out_dir, mapping)
    return mapping


def export(model, count=SAMPLE_COUNT, eval_count=EVAL_COUNT, log=print):
    """Write `count` sample images of different classes that every version of `model` gets right, and
    its first `eval_count` test images; returns (samples, eval images) as file -> label."""
    versions = [mv for mv in model.versions.values() if mv.train]
    if not versions:
        raise DataError(f"{model.name}: no version is trained here (no train table), so it has no test split",
                        f"put labelled images in samples/{model.name}/ and eval/{model.name}/ yourself")
    data = datasets.load(versions[0].train["dataset"])
    correct = torch.ones(len(data.test_labels), dtype=torch.bool)
    for mv in versions:
        metadata = weights.read_metadata(mv)
        trained = weights.build_model(mv.model_def, mv.weights)
        pre = metadata["preprocess"]
        x = model_input(data.test_images, pre["mean"][0], pre["std"][0])
        correct &= score(trained, x, data.test_labels)[2] == data.test_labels
    chosen, classes = [], set()
    for i in correct.nonzero().flatten().tolist():
        if len(chosen) < count and int(data.test_labels[i]) not in classes:
            chosen.append(i)
            classes.add(int(data.test_labels[i]))
    if len(chosen) < count:
        raise DataError(f"{model.name}: only {len(chosen)} classes have a test image every version gets right")
    first = versions[0]
    samples = write_images(first.samples, data.test_images, data.test_labels, chosen, data.labels)
    evals = write_images(model.eval_dir, data.test_images, data.test_labels, range(eval_count), data.labels)
    log(f"{model.name}: {len(samples)} samples -> {first.samples}, {len(evals)} eval images -> {model.eval_dir}")
    return samples, evals
