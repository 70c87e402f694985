"""`marforge import`: checkpoints in every shape a user brings, and every refusal, word for word.

Checkpoints are made here: CheXNet's own format from a seeded DenseNet121 (marforge/archiving/synthetic.py),
and Lightning, torch.compile and safetensors files from the small ConvNet.
"""

import json

import numpy as np
import pytest
import torch
from conftest import ROOT, temp_project

from marforge import registry as registry_module
from marforge.archiving import checkpoints, importer, presets, synthetic
from marforge.archiving.weights import build_model, model_class
from marforge.errors import CheckpointError
from marforge.project import Project

REGISTRY = """# a project of its own: comments must survive an import
[serving]
workers = 1            # one worker per version in this test

[models.digits]        # a model that is not touched
default_version = "1.0"
[models.digits.versions."1.0"]
model_def = "model_defs/convnet.py"   # its own comment
"""
CONVNET = dict(model_def="model_defs/convnet.py", labels=[str(i) for i in range(10)],
               preprocess={"image_size": [28, 28], "color": "grayscale", "mean": [0.5], "std": [0.25]})


@pytest.fixture
def project(tmp_path):
    return temp_project(tmp_path, REGISTRY)


@pytest.fixture(scope="module")
def chexnet_files(tmp_path_factory):
    """CheXNet-format checkpoints, plain and with training state, and the state_dict they hold."""
    folder = tmp_path_factory.mktemp("chexnet")
    state = synthetic.chexnet_checkpoint(folder / "model.pth.tar", ROOT / "model_defs" / "chexnet.py", seed=3)
    synthetic.chexnet_checkpoint(folder / "trained.pth.tar", ROOT / "model_defs" / "chexnet.py", seed=3,
                                 training_state=True)
    return folder, state


def convnet_state(seed=0):
    torch.manual_seed(seed)
    return model_class(ROOT / "model_defs" / "convnet.py")().state_dict()


def test_chexnets_own_format_is_imported_with_every_remap_reported(project, chexnet_files):
    folder, state = chexnet_files
    raw = (folder / "model.pth.tar").read_bytes()  # as the original was saved: legacy, storages on a GPU
    assert raw.startswith(checkpoints.LEGACY_MAGIC) and b"ctorch.cuda\nFloatStorage\n" in raw and b"cuda:0" in raw
    metadata, report = importer.import_checkpoint(project, "chexnet", "1.0", folder / "model.pth.tar", preset="chexnet")
    source = metadata["source"]
    assert source["serialization"] == "legacy" and source["container_key"] == "state_dict"
    assert source["remaps"] == ["strip 'module.' (nn.DataParallel)",
                                "DenseNet legacy names (norm.1 -> norm1, conv.2 -> conv2; torchvision's remap)",
                                "num_batches_tracked filled for 121 BatchNorm layer(s) (saved before PyTorch 0.4)"]
    assert source["keys"] == {"checkpoint": 606, "model": 727, "filled": 121}
    assert source["file"] == "model.pth.tar" and source["size"] == (folder / "model.pth.tar").stat().st_size
    imported = torch.load(project.weights_dir / "chexnet-1.0.pt", weights_only=True)
    assert all(torch.equal(imported[k], v) for k, v in state.items())  # every tensor where it belongs
    assert metadata["labels"] == list(presets.CHEXNET_FINDINGS) and metadata["task"] == "multilabel"
    assert metadata["preprocess"] == {"image_size": [224, 224], "color": "rgb", "mean": [0.485, 0.456, 0.406],
                                      "std": [0.229, 0.224, 0.225], "resize": 256, "crop": "ten"}
    assert "train" not in metadata and "synthetic" not in metadata
    assert report[0] == f"read {folder / 'model.pth.tar'}: legacy serialization, tensors in 'state_dict' (606 keys)"
    assert report[-1] == "added chexnet 1.0 to models.toml"


def test_the_registry_gains_the_version_and_keeps_its_comments(project, chexnet_files):
    importer.import_checkpoint(project, "chexnet", "1.0", chexnet_files[0] / "model.pth.tar", preset="chexnet",
                               handler={"crop": "center"})
    text = (project.root / "models.toml").read_text()
    assert text.startswith(REGISTRY)  # every line and comment as it was
    assert text.endswith('\n[models.chexnet]\ndefault_version = "1.0"\n\n[models.chexnet.versions."1.0"]\n'
                         'model_def = "model_defs/chexnet.py"\nhandler = { crop = "center" }\n')
    importer.import_checkpoint(project, "digits", "2.0", save(project, convnet_state(), "digits.pt"), **CONVNET)
    registry = registry_module.load(project.registry_file)
    assert list(registry.models["digits"].versions) == ["1.0", "2.0"] and registry.get("chexnet").version == "1.0"
    assert '[models.digits.versions."1.0"]\nmodel_def = "model_defs/convnet.py"   # its own comment\n\n' \
           '[models.digits.versions."2.0"]' in (project.root / "models.toml").read_text()


def test_a_training_runs_file_records_what_else_it_held(project, chexnet_files):
    metadata, _ = importer.import_checkpoint(project, "chexnet", "1.0", chexnet_files[0] / "trained.pth.tar",
                                             preset="chexnet")
    assert metadata["source"]["other_entries"] == {"epoch": "int", "best_loss": "float", "optimizer": "dict"}


def save(project, obj, name):
    path = project.root / name
    torch.save(obj, path)
    return path


def test_lightning_and_compile_prefixes_are_stripped(project):
    state = convnet_state(1)
    lightning = {"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 3, "global_step": 120,
                 "pytorch-lightning_version": "2.4.0"}
    metadata, _ = importer.import_checkpoint(project, "digits", "2.0", save(project, lightning, "l.ckpt"), **CONVNET)
    assert metadata["source"]["remaps"] == ["strip the common first component 'model.' (Lightning and similar wrappers)"]
    compiled = torch.compile(model_class(ROOT / "model_defs" / "convnet.py")()).state_dict()
    metadata, _ = importer.import_checkpoint(project, "digits", "3.0", save(project, compiled, "c.pt"), **CONVNET)
    assert metadata["source"]["remaps"] == ["strip '_orig_mod.' (torch.compile)"]
    assert metadata["source"]["container_key"] is None


def test_safetensors_files_are_read_with_the_safetensors_package(project):
    pytest.importorskip("safetensors", reason="safetensors is not installed here (requirements.txt)")
    from safetensors.torch import save_file

    state = convnet_state(2)
    save_file(state, project.root / "m.safetensors")
    metadata, _ = importer.import_checkpoint(project, "digits", "2.0", project.root / "m.safetensors", **CONVNET)
    assert metadata["source"]["serialization"] == "safetensors"
    assert all(torch.equal(torch.load(project.weights_dir / "digits-2.0.pt", weights_only=True)[k], v)
               for k, v in state.items())


def refused(project, path, **kwargs):
    with pytest.raises(CheckpointError) as caught:
        importer.import_checkpoint(project, "digits", "2.0", path, **{**CONVNET, **kwargs})
    assert not (project.weights_dir / "digits-2.0.pt").exists()
    return caught.value


def test_keys_that_no_rule_maps_are_refused_with_examples(project):
    error = refused(project, save(project, convnet_state(), "conv.pt"), model_def="model_defs/fashion_mlp.py")
    assert error.message == (f"{project.root / 'conv.pt'}: 6 key(s) do not match model_defs/fashion_mlp.py: "
                             "2 of the model's 6 are missing from the checkpoint (fc3.bias, fc3.weight), 4 of its 8 "
                             "are unexpected (conv1.bias, conv1.weight, conv2.bias, conv2.weight)")
    assert error.hint == ("check that model_defs/fashion_mlp.py is the architecture the checkpoint was trained with "
                          "(--model-def), or pass --strip-prefix / --add-prefix")


def test_a_prefix_the_rules_do_not_know_is_refused_naming_the_flag_that_fixes_it(project):
    wrapped = {f"backbone.{k}": v for k, v in convnet_state().items()} | {"head.scale": torch.ones(1)}
    error = refused(project, save(project, wrapped, "wrapped.pt"))
    assert error.hint == "pass --strip-prefix 'backbone.'"
    assert "8 of the model's 8 are missing" in error.message and "9 of its 9 are unexpected" in error.message


def test_a_numpy_scalar_is_refused_with_the_one_command_that_converts_the_file(project):
    path = save(project, {"state_dict": convnet_state(), "best_accuracy": np.float64(0.97)}, "numpy.pt")
    error = refused(project, path)
    assert error.message == (f"{path}: the checkpoint holds a numpy._core.multiarray.scalar, which loading with "
                             "weights_only=True refuses (unpickling it could run any code)")
    assert error.hint == ("if you trust the file, convert it once, in an environment where unpickling it is safe: "
                          f"python -c \"import torch; c = torch.load('{path}', map_location='cpu', weights_only=False); "
                          "s = c.state_dict() if hasattr(c, 'state_dict') else c.get('state_dict', c); "
                          "torch.save({k: v for k, v in s.items() if isinstance(v, torch.Tensor)}, "
                          f"'{path}.state_dict.pt')\" and import numpy.pt.state_dict.pt")


def test_the_conversion_command_really_converts(project):
    path = save(project, {"state_dict": convnet_state(4), "best_accuracy": np.float64(0.97)}, "numpy.pt")
    command = refused(project, path).hint.split(": ", 1)[1].rsplit(" and import ", 1)[0]
    import shlex
    import subprocess
    import sys

    argv = shlex.split(command)
    assert argv[0] == "python"
    subprocess.run([sys.executable, *argv[1:]], check=True)
    metadata, _ = importer.import_checkpoint(project, "digits", "2.0", f"{path}.state_dict.pt", **CONVNET)
    assert metadata["source"]["container_key"] is None


def test_a_whole_pickled_model_is_refused(project):
    path = save(project, torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)), "model.pt")
    error = refused(project, path)
    assert error.message == (f"{path}: the checkpoint holds a torch.nn.modules.container.Sequential (a whole pickled "
                             "model rather than its weights), which loading with weights_only=True refuses "
                             "(unpickling it could run any code)")


def test_a_git_lfs_pointer_and_an_html_page_are_not_checkpoints(project):
    lfs = project.root / "model.pth.tar"
    lfs.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "ab" * 32 + "\nsize 28496239\n")
    error = refused(project, lfs)
    assert error.message == (f"{lfs}: this is not a checkpoint: it is a Git LFS pointer ({lfs.stat().st_size} bytes) "
                             "to abababababab..., not the file")
    assert error.hint == "fetch the real file: git lfs pull (in its repository), or download it again"
    page = project.root / "download.pt"
    page.write_text("\n  <!DOCTYPE html><html><body>Sign in to continue</body></html>")
    assert refused(project, page).message == (f"{page}: this is not a checkpoint: it is an HTML page "
                                              f"({page.stat().st_size} bytes): a download that got a login, error "
                                              "or redirect page")


def test_truncated_files_are_recognised_as_such(project, chexnet_files):
    legacy = project.root / "cut.pth.tar"
    legacy.write_bytes((chexnet_files[0] / "model.pth.tar").read_bytes()[:5_000_000])
    error = refused(project, legacy)
    assert error.message.startswith(f"{legacy}: this is not a complete checkpoint: a truncated or damaged legacy "
                                    "torch.save file (")
    zipped = save(project, convnet_state(), "zip.pt")
    zipped.write_bytes(zipped.read_bytes()[:40_000])
    assert refused(project, zipped).message == (f"{zipped}: this is not a checkpoint: it is a truncated or damaged "
                                                "zip (torch.save) file (40000 bytes)")
    assert refused(project, zipped).hint == "download or copy it again"


def test_a_label_count_that_is_not_the_models_output_size_is_refused(project, chexnet_files):
    with pytest.raises(CheckpointError) as caught:
        importer.import_checkpoint(project, "chexnet", "1.0", chexnet_files[0] / "model.pth.tar", preset="chexnet",
                                   labels=list(presets.CHEXNET_FINDINGS[:13]))
    assert caught.value.message == (f"{chexnet_files[0] / 'model.pth.tar'}: model_defs/chexnet.py with these weights "
                                    "answers 14 values per image, but 13 labels were given")
    assert caught.value.hint == "pass --labels with 14 names in output order"


def test_another_shape_is_refused_naming_the_tensors(project):
    wide = {**convnet_state(), "fc2.weight": torch.zeros(12, 64), "fc2.bias": torch.zeros(12)}
    error = refused(project, save(project, wide, "wide.pt"))
    assert error.message == ("2 tensor(s) have another shape than model_defs/convnet.py expects: fc2.weight is "
                             "[12, 64] in the checkpoint, [10, 64] in the model; fc2.bias is [12] in the checkpoint, "
                             "[10] in the model")


def test_no_tensors_where_expected_says_which_entries_there_are(project):
    error = refused(project, save(project, {"weights": convnet_state(), "epoch": 2}, "odd.pt"))
    assert error.message == (f"{project.root / 'odd.pt'}: no entry of this dict holds the model's tensors (its "
                             "entries: weights (OrderedDict), epoch (int))")
    assert error.hint == "pass --key NAME for the entry that does (tried: state_dict, model_state_dict, model)"
    metadata, _ = importer.import_checkpoint(project, "digits", "2.0", project.root / "odd.pt", key="weights", **CONVNET)
    assert metadata["source"]["container_key"] == "weights" and metadata["source"]["other_entries"] == {"epoch": "int"}


def test_weights_are_never_replaced_silently_and_missing_settings_are_named(project):
    path = save(project, convnet_state(), "conv.pt")
    importer.import_checkpoint(project, "digits", "2.0", path, **CONVNET)
    with pytest.raises(CheckpointError) as again:
        importer.import_checkpoint(project, "digits", "2.0", path, **CONVNET)
    assert again.value.message == (f"{project.weights_dir / 'digits-2.0.pt'} exists already: a version's weights are "
                                   "never replaced silently")
    assert again.value.hint == "choose another version, or pass --force to replace them"
    importer.import_checkpoint(project, "digits", "2.0", path, force=True, **CONVNET)
    with pytest.raises(CheckpointError) as caught:
        importer.import_checkpoint(project, "digits", "3.0", path, model_def="model_defs/convnet.py")
    assert caught.value.message == "not enough to import: --labels, --image-size, --color, --mean, --std missing"


def test_an_imported_model_answers_as_the_checkpoint_did(project):
    state = convnet_state(5)
    importer.import_checkpoint(project, "digits", "2.0", save(project, {"model_state_dict": state}, "m.pt"), **CONVNET)
    model = build_model(project.root / "model_defs" / "convnet.py", project.weights_dir / "digits-2.0.pt")
    original = model_class(ROOT / "model_defs" / "convnet.py")()
    original.load_state_dict(state)
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(model(x), original.eval()(x))
    recorded = json.loads((project.weights_dir / "digits-2.0.json").read_text())
    assert recorded["source"]["container_key"] == "model_state_dict"


def test_sniffing_tells_the_serializations_apart(tmp_path, chexnet_files):
    torch.save({"w": torch.ones(1)}, tmp_path / "zip.pt")
    assert checkpoints.sniff(tmp_path / "zip.pt") == "zip"
    assert checkpoints.sniff(chexnet_files[0] / "model.pth.tar") == "legacy"
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="this is not a checkpoint: it is an empty file"):
        checkpoints.sniff(tmp_path / "empty.pt")


def test_a_real_version_becomes_the_default_of_a_model_whose_default_is_synthetic(project, chexnet_files):
    with open(project.registry_file, "a") as f:
        f.write('\n[models.chexnet]\ndefault_version = "0.1"  # the demo\n\n'
                '[models.chexnet.versions."0.1"]\nmodel_def = "model_defs/chexnet.py"\n')
    (project.root / "samples").symlink_to(ROOT / "samples")
    demo = Project.at(project.registry_file)
    synthetic.make_demo(demo, log=lambda line: None)
    assert json.loads((project.weights_dir / "chexnet-0.1.json").read_text())["synthetic"] == synthetic.SYNTHETIC
    _, report = importer.import_checkpoint(demo, "chexnet", "1.0", chexnet_files[0] / "model.pth.tar", preset="chexnet")
    assert report[-1] == "added chexnet 1.0 to models.toml as its default (0.1 has synthetic weights)"
    assert registry_module.load(project.registry_file).models["chexnet"].default_version == "1.0"
    assert 'default_version = "1.0"  # the demo' in project.registry_file.read_text()
    _, report = importer.import_checkpoint(demo, "chexnet", "1.1", chexnet_files[0] / "model.pth.tar", preset="chexnet")
    assert report[-1] == "added chexnet 1.1 to models.toml"  # 1.0 is real: it stays the default
