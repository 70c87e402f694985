"""The README's "Add a model of your own", followed by hand as a new user would: an RGB 32x32 model
that was not trained here, its weights, metadata, samples and registry entry; archived with and
without a labelled eval set."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from marforge import files
from marforge.archiving import archive
from marforge.archiving.worker import LoadedArchive
from marforge.errors import ArchiveError
from marforge.project import Project

MODEL = '''"""A tiny RGB classifier: which of red, green and blue dominates a 32 x 32 image."""

import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.conv(x), 1), 1)
'''
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (20, 40, 230)}


def png(folder, name, rgb, size=(40, 32)):
    Image.fromarray(np.full((size[1], size[0], 3), rgb, dtype=np.uint8), "RGB").save(folder / name)


@pytest.fixture
def project(tmp_path):
    """Steps 1 to 5 of the README, in a project of its own."""
    (tmp_path / "model_defs").mkdir()
    (tmp_path / "model_defs" / "tiny.py").write_text(MODEL)  # 1. one nn.Module, no arguments
    (tmp_path / "weights").mkdir()
    model_file = {}
    exec(compile(MODEL, "tiny.py", "exec"), model_file)
    model = model_file["Tiny"]()
    with torch.no_grad():  # weights that really answer: each channel votes for its own colour
        model.conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        model.conv.bias.zero_()
    torch.save(model.state_dict(), tmp_path / "weights" / "tiny-1.0.pt")  # 2. a plain state_dict
    (tmp_path / "weights" / "tiny-1.0.json").write_text(json.dumps({  # 3. the metadata
        "sha256": files.sha256(tmp_path / "weights" / "tiny-1.0.pt"), "labels": list(COLOURS),
        "preprocess": {"image_size": [32, 32], "color": "rgb", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}))
    samples = tmp_path / "samples" / "tiny"  # 4. a few labelled test images
    samples.mkdir(parents=True)
    for name, rgb in COLOURS.items():
        png(samples, f"{name}.png", rgb)
    (samples / "labels.json").write_text(json.dumps({f"{name}.png": name for name in COLOURS}))
    (tmp_path / "models.toml").write_text('[models.tiny]\ndefault_version = "1.0"\n\n'  # 5. the registry entry
                                          '[models.tiny.versions."1.0"]\nmodel_def = "model_defs/tiny.py"\n'
                                          'serving = { workers = 1, batch_size = 8, max_batch_delay_ms = 2 }\n'
                                          'handler = { top_k = 2 }\n')
    return Project.at(tmp_path / "models.toml")


def test_a_model_with_samples_but_no_eval_set_archives_and_says_what_it_could_not_check(project):
    mv = project.registry.get("tiny", "1.0")
    path, verification = archive.build(mv, project.model_store)  # 6. make archive
    assert path == project.model_store / "tiny-1.0.mar"
    assert verification.images == 3 and verification.accuracy is None
    assert verification.notes == (f"no eval set in {mv.eval_dir}: compared on the 3 sample(s) only",)
    assert verification.summary().endswith(f"; no eval set in {mv.eval_dir}: compared on the 3 sample(s) only")
    with LoadedArchive(path) as loaded:
        answers = loaded.predict([{"body": (mv.samples / f"{name}.png").read_bytes()} for name in COLOURS])
    assert [a.json()["predictions"][0]["label"] for a in answers] == list(COLOURS)
    assert [len(a.json()["predictions"]) for a in answers] == [2, 2, 2]


def test_with_an_eval_set_it_is_scored_too(project):
    mv = project.registry.get("tiny", "1.0")
    mv.eval_dir.mkdir(parents=True)
    truth = {}
    for i, (name, rgb) in enumerate(list(COLOURS.items()) * 4):
        png(mv.eval_dir, f"{i:02d}.png", tuple(min(255, c + 3 * i) for c in rgb), size=(50 + i, 32))
        truth[f"{i:02d}.png"] = name
    (mv.eval_dir / "labels.json").write_text(json.dumps(truth))
    _, verification = archive.build(mv, project.model_store)
    assert verification.images == 3 + 12 and verification.accuracy == 1.0 and verification.notes == ()


def test_a_model_with_no_samples_at_all_is_refused_saying_what_to_add(project):
    mv = project.registry.get("tiny", "1.0")
    (mv.samples / "labels.json").unlink()
    with pytest.raises(ArchiveError) as caught:
        archive.build(mv, project.model_store)
    assert caught.value.message.endswith(f"cannot verify: {mv.samples / 'labels.json'}: no sample images for tiny")
    assert caught.value.hint == f"put a few images in {mv.samples}/ with a labels.json (file -> label, or null)"
