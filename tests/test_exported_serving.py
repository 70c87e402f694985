"""Models exported elsewhere, brought in by `python -m marforge import --exported` (as `make import
EXPORTED=...` runs it) and served by marforge's handler with no model definition: fashion 2.0's network
saved as TorchScript, ONNX and a torch.export program, under names that do not say what they are.

Each is recognised by its content, imported with the labels and preprocessing given as flags, archived
as it is, verified against the file run directly (marforge/tasks/classification.py's reference: the
file loaded by exported.py, fed through torchvision's transforms), served by a real TorchServe whose
answers match the same file run in-process, and rolled out ts -> onnx -> export under load with no
failed request. What is not an exported model, a batch dimension fixed at export and a format that
needs the Python module are refused with the reason. Everything happens in a copy of the project.
"""

import json

import pytest
import torch
from conftest import ROOT

from marforge.archiving import archive, exported
from marforge.cli import main
from marforge.errors import ArchiveError, RegistryError
from marforge.project import Project

NAME = "fashionx"
SOURCE = json.loads((ROOT / "weights" / "fashion-2.0.json").read_text())
KINDS = {"1.0": ("torchscript", "model.pt"), "2.0": ("onnx", "model.bin"), "3.0": ("torch.export", "program")}


def source_model():
    from marforge.archiving.weights import build_model

    return build_model(ROOT / "model_defs" / "convnet.py", ROOT / "weights" / "fashion-2.0.pt")


def export_all(folder, fixed_batch=False):
    """fashion 2.0's network as each kind, under the names of KINDS; `fixed_batch`: ONNX only, batch fixed at 1."""
    model, example = source_model(), torch.zeros(2, 1, 28, 28)
    if fixed_batch:
        torch.onnx.export(model, (example[:1],), str(folder / "fixed.onnx"), dynamo=False, opset_version=17)
        return folder / "fixed.onnx"
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(model, example), str(folder / "model.pt"))
        torch.onnx.export(model, (example,), str(folder / "model.bin"), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
        batch = torch.export.Dim("batch", min=1, max=1024)
        torch.export.save(torch.export.export(model, (example,), dynamic_shapes=({0: batch},)), str(folder / "program.pt2"))
    (folder / "program.pt2").rename(folder / "program")
    return folder


def import_args(root, version, path, *extra):
    pre = SOURCE["preprocess"]
    return ["--registry", str(root / "models.toml"), "import", NAME, version, "--exported", str(path),
            "--labels", ",".join(SOURCE["labels"]), "--image-size", "28", "--color", pre["color"],
            "--mean", str(pre["mean"][0]), "--std", str(pre["std"][0]), "--samples", str(ROOT / "samples" / "fashion"), *extra]


def new_project(root):
    (root / "models.toml").write_text("# models exported elsewhere, imported by the tests\n")
    (root / "eval").mkdir()
    (root / "eval" / NAME).symlink_to(ROOT / "eval" / "fashion")
    return root


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    files = export_all(tmp_path_factory.mktemp("exported_files"))
    root = new_project(tmp_path_factory.mktemp("exported_project"))
    for version, (_, name) in KINDS.items():
        assert main(import_args(root, version, files / name)) == 0
    project = Project.at(root / "models.toml", model_store=root / "model_store", run_dir=root / ".run",
                         config=ROOT / "config.properties")
    built = {v: archive.build(project.registry.get(NAME, v), project.model_store) for v in KINDS}
    return project, files, built


def test_each_file_is_recognised_by_content_and_recorded_as_what_it_is(imported):
    project, files, _ = imported
    for version, (kind, name) in KINDS.items():
        mv = project.registry.get(NAME, version)
        assert (mv.exported, mv.model_def, mv.format) == (kind, None, exported.KINDS[kind].format)
        assert mv.weights.name == f"{NAME}-{version}{exported.KINDS[kind].suffix}"
        assert mv.weights.read_bytes() == (files / name).read_bytes()
        metadata = json.loads(mv.metadata.read_text())
        assert metadata["exported"]["kind"] == kind and metadata["task"] == "multiclass"
        assert metadata["labels"] == SOURCE["labels"] and metadata["source"]["file"] == name
    text = (project.root / "models.toml").read_text()
    assert 'exported = "torchscript"' in text and 'exported = "onnx"' in text and 'exported = "torch.export"' in text


def test_each_archive_is_verified_against_the_file_run_directly(imported):
    project, _, built = imported
    accuracies = set()
    for version, (_, verification) in built.items():
        assert verification.fmt == exported.KINDS[KINDS[version][0]].format
        assert verification.images == 304 and verification.agreement == 1.0 and verification.max_diff <= 1e-4
        accuracies.add(round(verification.accuracy, 4))
    assert len(accuracies) == 1 and accuracies.pop() >= 0.9  # one network, three files


@pytest.mark.parametrize("what, message", [
    ("checkpoint", "this is a torch.save checkpoint of weights"),
    ("png", "a PNG image"),
    ("truncated", "truncated or damaged"),
])
def test_what_is_not_an_exported_model_is_refused_saying_what_it_is(imported, tmp_path, capsys, what, message):
    _, files, _ = imported
    path = {"checkpoint": ROOT / "weights" / "fashion-2.0.pt",
            "png": sorted((ROOT / "samples" / "fashion").glob("*.png"))[0]}.get(what)
    if what == "truncated":
        path = tmp_path / "cut.pt"
        path.write_bytes((files / "model.pt").read_bytes()[:5000])
    (tmp_path / "project").mkdir()
    root = new_project(tmp_path / "project")
    assert main(import_args(root, "1.0", path)) == 1
    assert message in capsys.readouterr().err
    assert not (root / "weights").exists() and NAME not in (root / "models.toml").read_text()


def test_a_batch_dimension_fixed_at_export_is_refused(tmp_path, capsys):
    path = export_all(tmp_path, fixed_batch=True)
    (tmp_path / "project").mkdir()
    root = new_project(tmp_path / "project")
    assert main(import_args(root, "1.0", path)) == 1
    err = capsys.readouterr().err
    assert "its batch dimension may be fixed" in err and "dynamic batch dimension" in err


def test_a_format_built_from_the_python_module_is_unavailable(imported, tmp_path):
    project, _, _ = imported
    mv = project.registry.get(NAME, "2.0")
    with pytest.raises(ArchiveError) as caught:
        archive.build(mv, project.model_store, fmt="eager")
    assert caught.value.message.startswith(f"{NAME}-2.0 is an exported onnx file: it is archived as it is, in format onnx")
    text = (project.root / "models.toml").read_text().replace('exported = "onnx"', 'exported = "onnx"\nformat = "quantized"')
    (tmp_path / "models.toml").write_text(text)
    with pytest.raises(RegistryError) as refused:
        Project.at(tmp_path / "models.toml").registry
    assert "formats built from the Python module are unavailable for it" in refused.value.message


@pytest.mark.integration
def test_served_answers_match_the_file_run_in_process_and_roll_out_under_load(imported):
    from marforge.measure.loadgen import Background
    from marforge.serve import gate, launch, process, rollout
    from marforge.serve.rundir import RunDir
    from marforge.tasks import classification

    project, _, built = imported
    first = project.registry.get(NAME, "1.0")
    started = launch.serve(project, versions=[first], ports=process.free_listeners(), timeout=240)
    client = started.client
    image = sorted((ROOT / "samples" / "fashion").glob("*.png"))[0]
    try:
        with Background(f"{client.endpoints.inference}/predictions/{NAME}", image.read_bytes(),
                        lambda: client.key("inference"), clients=2) as load:
            load.wait_for(10)
            for version in ("2.0", "3.0"):
                report = rollout.rollout(client, project, NAME, version, watch_s=2.0, log=lambda line: None)
                assert report.outcome == "promoted"
                load.wait_for(10)
        assert load.failures() == []
        assert {v for versions in load.versions_by_client().values() for v in versions} == set(KINDS)
        for version in KINDS:
            mv = project.registry.get(NAME, version)
            config = gate.config_of(built[version][0])
            [probabilities] = classification.reference(mv, config, [image]).tolist()
            answer = client.predict(NAME, image.read_bytes(), version=version)
            for p in answer["predictions"]:
                assert abs(p["probability"] - probabilities[p["index"]]) <= 1e-4
    finally:
        process.stop(RunDir(project.run_dir))
