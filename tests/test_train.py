"""Training (train/recipe.py, train/samples.py) on a small, learnable stand-in for Fashion-MNIST
written as idx files: the recipe, the provenance it writes, and that training feeds the model
exactly the input the serving handler makes from the same picture."""

import gzip
import json
import shutil
import struct

import contract
import numpy as np
import protocols
import pytest
import torch
from conftest import ROOT
from PIL import Image

from marforge import files
from marforge.errors import MarforgeError
from marforge.project import Project
from marforge.train import datasets, recipe, samples

REGISTRY = '''
[models.fashion]
default_version = "1.0"
[models.fashion.versions."1.0"]
model_def = "model_defs/fashion_mlp.py"
train = { dataset = "fashion-mnist", epochs = 8, batch_size = 16, lr = 3e-3, seed = 0, min_accuracy = 0.9 }
'''


def write_idx(path, array, magic):
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def learnable(n, rng):
    """n 28x28 images whose class is the row of a bright band, with noise: an MLP learns it at once."""
    labels = np.arange(n) % 10
    images = rng.integers(0, 60, (n, 28, 28))
    for i, label in enumerate(labels):
        images[i, 2 * label + 3: 2 * label + 6, :] = 230
    return images, labels


@pytest.fixture
def project(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    data = tmp_path / "fashion-mnist"
    data.mkdir()
    for prefix, n in (("train", 400), ("t10k", 60)):
        images, labels = learnable(n, rng)
        write_idx(data / f"{prefix}-images-idx3-ubyte.gz", images, datasets.IDX_IMAGES_MAGIC)
        write_idx(data / f"{prefix}-labels-idx1-ubyte.gz", labels, datasets.IDX_LABELS_MAGIC)
    monkeypatch.setenv(datasets.FASHION_DIR_ENV, str(data))
    (tmp_path / "models.toml").write_text(REGISTRY)
    shutil.copytree(ROOT / "model_defs", tmp_path / "model_defs")
    return Project.at(tmp_path / "models.toml")


def test_a_version_is_trained_by_its_recipe_with_its_provenance(project):
    mv = project.registry.get("fashion", "1.0")
    [metadata] = recipe.train(project, [mv], log=lambda line: None)
    assert json.loads(mv.metadata.read_text()) == metadata
    assert metadata["sha256"] == files.sha256(mv.weights) and metadata["file_size"] == mv.weights.stat().st_size
    assert set(torch.load(mv.weights, weights_only=True)) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias",
                                                             "fc3.weight", "fc3.bias"}
    assert metadata["model_def"] == "model_defs/fashion_mlp.py" and metadata["model_class"] == "FashionMLP"
    assert metadata["dataset"]["name"] == "fashion-mnist"
    assert (metadata["dataset"]["train_size"], metadata["dataset"]["test_size"]) == (400, 60)
    assert metadata["labels"] == datasets.FASHION_LABELS
    mean, std = recipe.normalizer(datasets.load("fashion-mnist").train_images)
    assert metadata["preprocess"] == {"image_size": [28, 28], "color": "grayscale", "mean": [mean], "std": [std]}
    assert metadata["metrics"]["test_accuracy"] >= 0.9
    assert metadata["command"] == "python -m marforge train fashion 1.0"
    assert metadata["recipe"] == {**mv.train, "optimizer": "adam"}


def test_training_feeds_the_model_exactly_what_the_handler_makes(project):
    data = datasets.load("fashion-mnist")
    mean, std = recipe.normalizer(data.train_images)
    trained_on = recipe.model_input(data.test_images[:5], mean, std)
    config = contract.HandlerConfig.from_dict({**contract.preprocess_metadata((28, 28), "grayscale", [mean], [std]),
                                               "labels": data.labels})
    served = torch.stack([protocols.prepare({"body": png(image)}, config) for image in data.test_images[:5]])
    assert torch.equal(trained_on, served)  # bit for bit: the same op on the same pixels


def png(image):
    import io

    buffer = io.BytesIO()
    Image.fromarray(image.numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_run_below_its_floor_fails_after_writing_its_files(project):
    mv = project.registry.get("fashion", "1.0")
    strict = mv.__class__(**{**vars(mv), "train": {**mv.train, "epochs": 1, "lr": 1e-6, "min_accuracy": 0.99}})
    with pytest.raises(MarforgeError) as caught:
        recipe.train(project, [strict], log=lambda line: None)
    accuracy = json.loads(mv.metadata.read_text())["metrics"]["test_accuracy"]
    assert caught.value.message == f"fashion-1.0: test accuracy {accuracy:.4f} is below its floor 0.99"
    assert caught.value.hint == "change the train recipe in models.toml (epochs, lr) and train again"


def test_samples_and_eval_images_come_from_the_test_split(project):
    mv = project.registry.get("fashion", "1.0")
    recipe.train(project, [mv], log=lambda line: None)
    chosen, evals = samples.export(project.registry.models["fashion"], count=4, eval_count=20, log=lambda line: None)
    assert len(chosen) == 4 and len({label for label in chosen.values()}) == 4
    assert sorted(evals) == sorted(p.name for p in (project.eval_root / "fashion").glob("*.png"))
    assert json.loads((project.samples_dir / "fashion" / "labels.json").read_text()) == chosen
    data = datasets.load("fashion-mnist")
    for name, label in evals.items():
        index = int(name.split("-")[0])
        assert data.labels[int(data.test_labels[index])] == label
        assert np.array_equal(np.asarray(Image.open(project.eval_root / "fashion" / name)), data.test_images[index].numpy())


def test_a_version_without_a_recipe_is_not_trained_here(project):
    mv = project.registry.get("fashion", "1.0")
    bare = mv.__class__(**{**vars(mv), "train": {}})
    with pytest.raises(MarforgeError) as caught:
        recipe.train(project, [bare], log=lambda line: None)
    assert caught.value.message == "fashion-1.0: models.toml has no train table for this version"
