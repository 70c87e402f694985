"""An own handler with an exported model, the README's first own-handler command as a user runs it.

The debsections network scripted to a TorchScript file `model.pt`, the debsections handler copied as
the user's `handlers/reviews_handler.py` and its vocabulary as `words.vocab.json`, imported through the
CLI (`import --exported --handler-file --extra-file --samples`) into a new project, its answers recorded
(`expect`), then archived and verified: the handler and the TorchScript file go into the archive byte
for byte, no model definition goes in, and an answer that drifted from the recorded ones is refused.
"""

import json
import shutil
import zipfile

import pytest
import torch
from conftest import ROOT

from marforge.archiving import archive
from marforge.cli import main
from marforge.errors import ArchiveError
from marforge.project import Project

NAME, VERSION = "reviews", "1.0"
SOURCE = "debsections"


def scripted(path):
    """debsections 1.0's network (model_defs/debsections.py with its weights), scripted to `path`."""
    from marforge.archiving.weights import build_model

    model = build_model(ROOT / "model_defs" / f"{SOURCE}.py", ROOT / "weights" / f"{SOURCE}-1.0.pt").eval()
    torch.jit.save(torch.jit.script(model), str(path))
    return path


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """A new project holding only what a user has: model.pt, a handler, a vocabulary and sample texts."""
    root = tmp_path_factory.mktemp("own_exported")
    (root / "models.toml").write_text("# a user's project\n")
    (root / "handlers").mkdir()
    shutil.copy(ROOT / "handlers" / f"{SOURCE}_handler.py", root / "handlers" / f"{NAME}_handler.py")
    shutil.copy(ROOT / "weights" / f"{SOURCE}-1.0.vocab.json", root / "words.vocab.json")
    (root / "my_texts").mkdir()
    for sample in (ROOT / "samples" / SOURCE).glob("*.txt"):
        shutil.copy(sample, root / "my_texts")
    scripted(root / "model.pt")
    args = ["--registry", str(root / "models.toml")]
    assert main([*args, "import", NAME, VERSION, "--exported", str(root / "model.pt"),
                 "--handler-file", str(root / "handlers" / f"{NAME}_handler.py"),
                 "--extra-file", str(root / "words.vocab.json"), "--samples", str(root / "my_texts")]) == 0
    assert main([*args, "expect", NAME, VERSION]) == 0
    project = Project.at(root / "models.toml", model_store=root / "model_store", run_dir=root / ".run",
                         config=ROOT / "config.properties")
    return root, project


def test_the_import_writes_an_exported_version_served_by_the_users_handler(imported):
    root, project = imported
    mv = project.registry.get(NAME, VERSION)
    assert (mv.exported, mv.model_def, mv.own_handler) == ("torchscript", None, True)
    assert (mv.handler_file, list(mv.extra_files)) == (root / "handlers" / f"{NAME}_handler.py", [root / "words.vocab.json"])
    assert (root / "weights" / f"{NAME}-{VERSION}.torchscript.pt").read_bytes() == (root / "model.pt").read_bytes()


def test_expect_records_the_handlers_answers_to_every_sample(imported):
    root, _ = imported
    recorded = json.loads((root / "samples" / NAME / f"expected-{VERSION}.json").read_text())
    shipped = json.loads((ROOT / "samples" / SOURCE / "expected-1.0.json").read_text())
    assert sorted(recorded) == sorted(shipped) and len(recorded) == 6
    for sample, answer in recorded.items():  # the scripted network answers as the eager one does
        assert answer["section"] == shipped[sample]["section"]
        assert answer["probability"] == pytest.approx(shipped[sample]["probability"], abs=1e-5)


def test_the_archive_holds_the_handler_and_the_torchscript_file_as_written_and_verifies(imported):
    root, project = imported
    path, verification = archive.build(project.registry.get(NAME, VERSION), project.model_store)
    with zipfile.ZipFile(path) as mar:
        names = set(mar.namelist())
        manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"]
        handler, model = mar.read(f"{NAME}_handler.py"), mar.read(manifest["serializedFile"])
    assert names == {"MAR-INF/MANIFEST.json", f"{NAME}_handler.py", manifest["serializedFile"],
                     "words.vocab.json", "model-config.yaml"}
    assert "modelFile" not in manifest and manifest["handler"] == f"{NAME}_handler.py"
    assert handler == (root / "handlers" / f"{NAME}_handler.py").read_bytes()
    assert model == (root / "model.pt").read_bytes()
    assert verification.images == 6 and verification.agreement == 1.0


def test_an_answer_that_drifted_from_the_recorded_ones_is_refused_naming_the_sample(imported, tmp_path):
    root, project = imported
    answers_file = root / "samples" / NAME / f"expected-{VERSION}.json"
    kept = answers_file.read_text()
    recorded = json.loads(kept)
    sample = sorted(recorded)[0]
    recorded[sample]["probability"] += 0.01
    answers_file.write_text(json.dumps(recorded))
    try:
        with pytest.raises(ArchiveError) as refused:
            archive.build(project.registry.get(NAME, VERSION), tmp_path / "store")
    finally:
        answers_file.write_text(kept)
    assert sample in str(refused.value) and "probability" in str(refused.value)
