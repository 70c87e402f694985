"""Train the registered model versions and export their sample and eval images.

Run from the project root (scikit-learn is needed for the digits data):

    .venv/bin/python -m marforge.train fashion 1.0    # writes weights/fashion-1.0.pt and .json
    .venv/bin/python -m marforge.train --all          # every version with a train table (make weights)
    .venv/bin/python -m marforge.train --samples      # writes samples/<name>/ and eval/<name>/

Training follows the version's `train` table in models.toml (dataset, epochs, batch_size, lr, seed,
min_accuracy: the test accuracy the run must reach, else it exits 1 after writing its files) with Adam and the NLL loss on the model's log-probabilities. The input contract is the serving
handler's: x = (pixels / 255 - mean) / std on N x 1 x 28 x 28 float32, where mean and std are the
training split's, rounded to 4 decimals and recorded in the metadata beside the weights. The weights
are a plain state_dict; the metadata records where they came from and how to make them again.
"""

import json
import random
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from marforge import datasets, weights
from marforge.errors import MarforgeError
from marforge.registry import REGISTRY_FILE
from marforge.registry import load as load_registry

SAMPLE_COUNT = 4  # sample images per model, each of a different class
EVAL_COUNT = 300  # the first test images per model, not cherry-picked
EVAL_BATCH = 1000


def normalizer(images):
    """mean and std of the images' pixels / 255, each rounded to 4 decimals."""
    x = images.double() / 255.0
    return round(x.mean().item(), 4), round(x.std(unbiased=False).item(), 4)


def preprocess(images, mean, std):
    """uint8 N x 28 x 28 images -> the float32 N x 1 x 28 x 28 model input."""
    return ((images.float() / 255.0 - mean) / std).unsqueeze(1)


def seed_everything(seed):
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    torch.use_deterministic_algorithms(True)


@torch.no_grad()
def evaluate(model, x, y):
    """(accuracy, mean NLL loss, predictions) of model on inputs x and labels y, in eval mode."""
    model.eval()
    logp = torch.cat([model(x[i : i + EVAL_BATCH]) for i in range(0, len(x), EVAL_BATCH)])
    preds = logp.argmax(1)
    return (preds == y).float().mean().item(), F.nll_loss(logp, y).item(), preds


def train_epoch(model, optimizer, x, y, batch_size, generator):
    """One pass over (x, y) in a seeded random order; returns the mean training loss."""
    model.train()
    order = torch.randperm(len(x), generator=generator)
    total = 0.0
    for i in range(0, len(x), batch_size):
        idx = order[i : i + batch_size]
        optimizer.zero_grad()
        loss = F.nll_loss(model(x[idx]), y[idx])
        loss.backward()
        optimizer.step()
        total += loss.item() * len(idx)
    return total / len(x)


def _relative(path):
    """path relative to the project root (the nearest folder above it holding models.toml)."""
    for parent in Path(path).resolve().parents:
        if (parent / REGISTRY_FILE).exists():
            return Path(path).resolve().relative_to(parent).as_posix()
    return str(path)


def train_version(mv):
    """Train one registry ModelVersion by its recipe, write its weights and metadata; returns the metadata."""
    recipe = mv.train
    if not recipe:
        raise MarforgeError(f"{mv.key}: models.toml has no train table for this version")
    seed_everything(recipe["seed"])
    data = datasets.load(recipe["dataset"])
    mean, std = normalizer(data.train_images)
    x_train, x_test = preprocess(data.train_images, mean, std), preprocess(data.test_images, mean, std)
    model_class = weights.model_class(mv.model_def)
    model = model_class()
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe["lr"])
    generator = torch.Generator().manual_seed(recipe["seed"])
    print(f"{mv.key}: {model_class.__name__} on {data.name} ({len(x_train)} train, {len(x_test)} test), "
          f"mean {mean} std {std}", flush=True)
    for epoch in range(1, recipe["epochs"] + 1):
        start = time.perf_counter()
        loss = train_epoch(model, optimizer, x_train, data.train_labels, recipe["batch_size"], generator)
        accuracy, _, _ = evaluate(model, x_test, data.test_labels)
        print(f"{mv.key} epoch {epoch:2d}: train loss {loss:.4f}  test accuracy {accuracy:.4f}  "
              f"{time.perf_counter() - start:.1f}s", flush=True)
    accuracy, test_loss, _ = evaluate(model, x_test, data.test_labels)
    mv.weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), mv.weights)
    metadata = {
        "name": mv.name,
        "version": mv.version,
        "model_def": _relative(mv.model_def),
        "model_class": model_class.__name__,
        "sha256": weights.sha256_of(mv.weights),
        "file_size": mv.weights.stat().st_size,
        "dataset": {"name": data.name, "source": data.source,
                    "train_size": len(x_train), "test_size": len(x_test)},
        "labels": data.labels,
        "preprocess": {"image_size": [28, 28], "color": "grayscale", "mean": [mean], "std": [std]},
        "metrics": {"test_accuracy": round(accuracy, 6), "test_loss": round(test_loss, 6)},
        "recipe": {**recipe, "optimizer": "adam"},
        "command": f"python -m marforge.train {mv.name} {mv.version}",
        "torch_version": torch.__version__,
        "created": datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
    }
    mv.metadata.write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    print(f"{mv.key}: test accuracy {accuracy:.4f}, test loss {test_loss:.4f} -> {mv.weights}", flush=True)
    return metadata


def check_floor(mv, metadata):
    """Raise if the version's test accuracy is below the `min_accuracy` of its train table."""
    floor = mv.train.get("min_accuracy")
    accuracy = metadata["metrics"]["test_accuracy"]
    if floor is not None and accuracy < floor:
        raise MarforgeError(
            f"{mv.key}: test accuracy {accuracy:.4f} is below its floor {floor}",
            "change the train recipe in models.toml (epochs, lr) and train again",
        )


def load_trained(mv):
    """(model in eval mode, metadata) for a trained version, after checking its sha256 and format."""
    metadata = weights.read_metadata(mv)
    return weights.build_model(mv.model_def, mv.weights), metadata


def slug(label):
    """A file-name-safe form of a label: "T-shirt/top" -> "t-shirt-top"."""
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def write_images(out_dir, images, labels, indices, names):
    """Write test images `indices` as 8-bit grayscale PNGs plus labels.json; replaces old PNGs."""
    from PIL import Image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.png"):
        old.unlink()
    mapping = {}
    for i in indices:
        label = names[int(labels[i])]
        file_name = f"{i:05d}-{slug(label)}.png"
        Image.fromarray(images[i].numpy()).save(out_dir / file_name)
        mapping[file_name] = label
    (out_dir / "labels.json").write_text(json.dumps(mapping, indent=2) + "\n")
    return mapping


def export_samples(registry, name, count, out_dir, eval_count, eval_dir):
    """Write `count` sample images of different classes that every version of model `name` gets right
    (the first such test images in test order) to out_dir, and the first `eval_count` test images to eval_dir."""
    versions = list(registry.models[name].versions.values())
    data = datasets.load(versions[0].train["dataset"])
    correct = torch.ones(len(data.test_labels), dtype=torch.bool)
    for mv in versions:
        model, metadata = load_trained(mv)
        pre = metadata["preprocess"]
        x = preprocess(data.test_images, pre["mean"][0], pre["std"][0])
        correct &= evaluate(model, x, data.test_labels)[2] == data.test_labels
    chosen, classes = [], set()
    for i in correct.nonzero().flatten().tolist():
        if len(chosen) < count and int(data.test_labels[i]) not in classes:
            chosen.append(i)
            classes.add(int(data.test_labels[i]))
    if len(chosen) < count:
        raise MarforgeError(f"{name}: only {len(chosen)} classes have a test image every version gets right")
    samples = write_images(out_dir, data.test_images, data.test_labels, chosen, data.labels)
    evals = write_images(eval_dir, data.test_images, data.test_labels, range(eval_count), data.labels)
    print(f"{name}: {len(samples)} samples -> {out_dir}, {len(evals)} eval images -> {eval_dir}", flush=True)


def main(argv):
    usage = "usage: python -m marforge.train NAME VERSION | --all | --samples"
    try:
        reg = load_registry()
        if argv == ["--samples"]:
            for name, model in reg.models.items():
                first = next(iter(model.versions.values()))
                export_samples(reg, name, SAMPLE_COUNT, first.samples, EVAL_COUNT, model.eval_dir)
            return 0
        if argv == ["--all"]:
            versions = [mv for mv in reg.all_versions() if mv.train]
        elif len(argv) == 2:
            versions = [reg.get(*argv)]
        else:
            print(usage, file=sys.stderr)
            return 2
        for mv in versions:
            check_floor(mv, train_version(mv))
        return 0
    except MarforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
