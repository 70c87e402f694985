"""Train a registry version by its recipe and write its weights with their provenance.

Training follows the version's `train` table in models.toml (dataset, epochs, batch_size, lr, seed,
min_accuracy: the test accuracy the run must reach) with Adam and the NLL loss on the model's
log-probabilities. Its input is exactly the serving handler's: the contract's `normalise` of the
data set's 8-bit pixels with the training split's mean and std (rounded to 4 decimals), which are
recorded, with the data set's image size and color, as the weights' `preprocess` metadata. The
weights are a plain state_dict; the metadata records where they came from and how to make them again.

    python -m marforge train fashion 1.0      # writes weights/fashion-1.0.pt and .json
    python -m marforge train --all            # every version with a train table (make weights)
"""

import json
import random
import time

import numpy as np
import torch
from torch.nn import functional as F

from marforge import files, shipped
from marforge.archiving import weights
from marforge.errors import MarforgeError
from marforge.train import datasets

TEST_BATCH = 1000


def normalizer(images):
    """mean and std of the images' pixels / 255, each rounded to 4 decimals."""
    x = images.double() / 255.0
    return round(x.mean().item(), 4), round(x.std(unbiased=False).item(), 4)


def model_input(images, mean, std):
    """uint8 N x H x W grayscale images -> the float32 N x 1 x H x W model input the handler makes."""
    return shipped.contract().normalise(images.unsqueeze(-1), [mean], [std])


def seed_everything(seed):
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    torch.use_deterministic_algorithms(True)


@torch.no_grad()
def score(model, x, y):
    """(accuracy, mean NLL loss, predictions) of `model` on inputs x and labels y, in eval mode."""
    model.eval()
    logp = torch.cat([model(x[i : i + TEST_BATCH]) for i in range(0, len(x), TEST_BATCH)])
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


def train_version(project, mv, log=print):
    """Train one registry version by its recipe, write its weights and metadata; returns the metadata."""
    recipe = mv.train
    if not recipe:
        raise MarforgeError(f"{mv.key}: models.toml has no train table for this version",
                            "versions imported or made elsewhere are not trained here")
    seed_everything(recipe["seed"])
    data = datasets.load(recipe["dataset"])
    mean, std = normalizer(data.train_images)
    x_train, x_test = model_input(data.train_images, mean, std), model_input(data.test_images, mean, std)
    model_class = weights.model_class(mv.model_def)
    model = model_class()
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe["lr"])
    generator = torch.Generator().manual_seed(recipe["seed"])
    log(f"{mv.key}: {model_class.__name__} on {data.name} ({len(x_train)} train, {len(x_test)} test), "
        f"mean {mean} std {std}")
    for epoch in range(1, recipe["epochs"] + 1):
        start = time.perf_counter()
        loss = train_epoch(model, optimizer, x_train, data.train_labels, recipe["batch_size"], generator)
        accuracy, _, _ = score(model, x_test, data.test_labels)
        log(f"{mv.key} epoch {epoch:2d}: train loss {loss:.4f}  test accuracy {accuracy:.4f}  "
            f"{time.perf_counter() - start:.1f}s")
    accuracy, test_loss, _ = score(model, x_test, data.test_labels)
    mv.weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), mv.weights)
    metadata = {
        "name": mv.name,
        "version": mv.version,
        "model_def": project.relative(mv.model_def),
        "model_class": model_class.__name__,
        "sha256": files.sha256(mv.weights),
        "file_size": mv.weights.stat().st_size,
        "dataset": {"name": data.name, "source": data.source,
                    "train_size": len(x_train), "test_size": len(x_test)},
        "labels": data.labels,
        "preprocess": shipped.contract().preprocess_metadata(data.image_size, data.color, [mean], [std]),
        "metrics": {"test_accuracy": round(accuracy, 6), "test_loss": round(test_loss, 6)},
        "recipe": {**recipe, "optimizer": "adam"},
        "command": f"python -m marforge train {mv.name} {mv.version}",
        "torch_version": torch.__version__,
        "created": files.utc_now(),
    }
    mv.metadata.write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    log(f"{mv.key}: test accuracy {accuracy:.4f}, test loss {test_loss:.4f} -> {mv.weights}")
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


def train(project, versions, log=print):
    """Train each version and check its floor (after writing its files); returns their metadata.

    Deterministic algorithms are on while training (seed_everything) and as they were afterwards.
    """
    from marforge.train import scene_recipe, text_recipe  # they build on this module

    deterministic = torch.are_deterministic_algorithms_enabled()
    results = []
    try:
        for mv in versions:
            if mv.train.get("dataset") == scene_recipe.DATASET_NAME:  # a detector or segmenter on composed scenes
                results.append(scene_recipe.train_version(project, mv, log=log))
                continue
            if mv.train.get("dataset") == text_recipe.DATASET_NAME:  # the own-handler text example (debsections)
                results.append(text_recipe.train_version(project, mv, log=log))
                continue
            metadata = train_version(project, mv, log=log)
            check_floor(mv, metadata)
            results.append(metadata)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    return results
