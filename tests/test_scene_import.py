"""A detector and a segmenter trained elsewhere, brought in by `make import` (`python -m marforge
import`) with a torchvision-interface model definition: archived and verified against the model run
directly, and refused with a message when the definition is not what the task needs."""

import json

import pytest
import torch
from conftest import ROOT, task_of, temp_project

from marforge import tasks
from marforge.archiving import archive
from marforge.cli import main
from marforge.project import Project

REGISTRY = '[serving]\nworkers = 1\nbatch_size = 4\nmax_batch_delay_ms = 1\n'
FLAGS = {"detection": ("--model-def", "model_defs/scene_detector.py", "--crop", "keep", "--mean", "0", "--std", "1",
                       "--handler", "score_threshold=0.4"),
         "segmentation": ("--model-def", "model_defs/scene_segmenter.py", "--mean", "0.1", "--std", "0.25")}


def trained(registry, task):
    """A version of the registry's trained for `task` (its real weights stand for a checkpoint from elsewhere)."""
    found = [mv for mv in registry.all_versions() if task_of(mv) == task]
    if not found:
        pytest.skip(f"no {task} version in the registry")
    return found[0]


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_a_scene_checkpoint_imports_archives_and_verifies_against_the_model_run_directly(registry, task, tmp_path, capsys):
    mv = trained(registry, task)
    metadata = json.loads(mv.metadata.read_text())
    checkpoint = tmp_path / "checkpoint.pth"
    torch.save({"epoch": 7, "model": torch.load(mv.weights, weights_only=True)}, checkpoint)
    (tmp_path / "project").mkdir()
    project = temp_project(tmp_path / "project", REGISTRY)
    flags = list(FLAGS[task])
    if task == "segmentation":
        flags[3], flags[5] = str(metadata["preprocess"]["mean"][0]), str(metadata["preprocess"]["std"][0])
    code = main(["--registry", str(project.registry_file), "import", "mine", "3.1", "--checkpoint", str(checkpoint),
                 "--task", task, "--labels", ",".join(metadata["labels"]), "--image-size", "96", "--color", "grayscale",
                 "--samples", str(mv.samples), *flags])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "next: make archive && make serve" in out
    imported = Project.at(project.registry_file).registry.get("mine", "3.1")
    written = json.loads(imported.metadata.read_text())
    assert written["task"] == task and written["labels"] == metadata["labels"]
    path, verification = archive.build(imported, tmp_path / "store")
    assert path.is_file() and verification.agreement == 1.0 and verification.images == len(list(mv.samples.glob("*.png")))
    if task == "detection":
        assert written["preprocess"]["crop"] == "keep"
        assert verification.samples[0]["detections"] >= 1


def test_a_classifier_definition_imported_as_a_detector_is_refused_saying_why(tmp_path, capsys):
    from marforge.archiving.weights import model_class

    (tmp_path / "project").mkdir()
    project = temp_project(tmp_path / "project", REGISTRY)
    checkpoint = tmp_path / "classifier.pth"
    torch.manual_seed(0)
    torch.save(model_class(ROOT / "model_defs" / "fashion_mlp.py")().state_dict(), checkpoint)
    code = main(["--registry", str(project.registry_file), "import", "mine", "1.0", "--checkpoint", str(checkpoint),
                 "--task", "detection", "--model-def", "model_defs/fashion_mlp.py", "--labels", ",".join("abcdefghij"),
                 "--image-size", "28", "--color", "grayscale", "--mean", "0", "--std", "1", "--crop", "keep"])
    err = capsys.readouterr().err
    assert code == 1
    assert err == (f"error: {checkpoint}: model_defs/fashion_mlp.py cannot run as a detection model on a list of one "
                   "1 x 28 x 28 input: TypeError: flatten(): argument 'input' (position 1) must be Tensor, not list\n"
                   "  next: pass --model-def with a torchvision detection model\n")


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_a_scene_model_archives_as_torchscript_and_refuses_formats_it_cannot_take(registry, task, tmp_path):
    from marforge.errors import ArchiveError

    mv = trained(registry, task)
    path, verification = archive.build(mv, tmp_path, fmt="torchscript")  # scripted, not traced
    assert verification.agreement == 1.0 and verification.fmt == "torchscript"
    with pytest.raises(ArchiveError) as caught:
        archive.build(mv, tmp_path, fmt="onnx")
    why = tasks.of(task).UNAVAILABLE
    assert caught.value.message == f"{mv.key} is a {task} model: it cannot be archived as onnx ({why})"
    assert caught.value.hint == "use one of: eager, torchscript"
