"""The README's bring-your-own path, followed as written for a model of a new name: `make import`
leaves a version that `make archive` takes as it is (issue 18, defect 7)."""

import json

import pytest
from conftest import ROOT, temp_project
from test_handmade import COLOURS, png

from marforge.archiving import archive, importer, synthetic
from marforge.cli import main
from marforge.errors import DataError
from marforge.project import Project

REGISTRY = '[serving]\nworkers = 1\nbatch_size = 2\nmax_batch_delay_ms = 1\n'


@pytest.fixture
def project(tmp_path):
    return temp_project(tmp_path, REGISTRY)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("xray") / "model.pth.tar"
    synthetic.chexnet_checkpoint(path, ROOT / "model_defs" / "chexnet.py", seed=5)
    return path


def run_import(project, checkpoint, *extra):
    return main(["--registry", str(project.registry_file), "import", "xraycheck", "7.0", "--checkpoint",
                 str(checkpoint), *extra])


def test_a_chexnet_import_under_a_new_name_archives_as_it_is(project, checkpoint, capsys, tmp_path):
    assert run_import(project, checkpoint, "--preset", "chexnet") == 0
    out = capsys.readouterr().out
    assert "wrote 2 generated sample image(s) (the chexnet preset's, unlabelled) to samples/xraycheck/" in out
    assert "next: make archive && make serve" in out
    labels = json.loads((project.samples_dir / "xraycheck" / "labels.json").read_text())
    assert labels == {"generated-1-320x320.png": None, "generated-2-300x380.png": None}
    mv = Project.at(project.registry_file).registry.get("xraycheck", "7.0")
    path, verification = archive.build(mv, tmp_path / "model_store")
    assert path.is_file()


def test_without_samples_or_a_preset_that_has_some_the_import_says_what_is_missing(project, capsys):
    ready, line = importer.provide_samples(project, "xraycheck")
    assert not ready
    assert line == ("missing: sample images in samples/xraycheck/ (make archive verifies the archive with them); "
                    "re-run with --samples DIR (make import ... SAMPLES=DIR), DIR holding images and, "
                    "if known, a labels.json mapping each file name to its label")
    assert not (project.samples_dir / "xraycheck").exists()


def test_the_cli_names_what_is_missing_instead_of_promising_the_next_step(project, capsys, tmp_path):
    import torch

    from marforge.archiving.weights import model_class

    torch.save(model_class(ROOT / "model_defs" / "convnet.py")().state_dict(), tmp_path / "digits.pt")
    assert main(["--registry", str(project.registry_file), "import", "mydigits", "3.0", "--checkpoint",
                 str(tmp_path / "digits.pt"), "--model-def", "model_defs/convnet.py", "--labels",
                 ",".join(str(i) for i in range(10)), "--image-size", "28", "--color", "grayscale",
                 "--mean", "0.5", "--std", "0.25"]) == 0
    out = capsys.readouterr().out
    assert "missing: sample images in samples/mydigits/ (make archive verifies the archive with them); " \
           "re-run with --samples DIR (make import ... SAMPLES=DIR)" in out
    assert "next:" not in out


def test_samples_given_are_copied_with_their_labels_or_null(project, tmp_path):
    given = tmp_path / "mine"
    given.mkdir()
    for name, rgb in COLOURS.items():
        png(given, f"{name}.png", rgb)
    (given / "notes.txt").write_text("not an image")
    (given / "labels.json").write_text(json.dumps({"red.png": "red", "blue.png": "blue"}))
    ready, line = importer.provide_samples(project, "tiny", given, preset="chexnet")
    assert ready and line == f"copied 3 sample(s) from {given} to samples/tiny/"
    folder = project.samples_dir / "tiny"
    assert json.loads((folder / "labels.json").read_text()) == {"blue.png": "blue", "green.png": None, "red.png": "red"}
    assert sorted(p.name for p in folder.iterdir()) == ["blue.png", "green.png", "labels.json", "red.png"]
    ready, line = importer.provide_samples(project, "tiny")
    assert ready and line == "samples/tiny/ has sample images already: left as they are"


def test_a_samples_folder_that_is_not_one_is_refused(project, tmp_path):
    with pytest.raises(DataError) as error:
        importer.provide_samples(project, "tiny", tmp_path / "nope")
    assert error.value.message == f"--samples {tmp_path / 'nope'}: not a folder"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as error:
        importer.provide_samples(project, "tiny", tmp_path / "empty")
    assert error.value.message.startswith(f"--samples {tmp_path / 'empty'}: no samples (looked for .png, .jpg")
