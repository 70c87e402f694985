"""Archives built by marforge: names, manifests, verification, and what verification must catch."""

import dataclasses
import json
import shutil
import zipfile

import pytest
import torch

from marforge import files, shipped
from marforge import registry as registry_module
from marforge.archiving import archive, mar, verify
from marforge.errors import ArchiveError, RegistryError, WeightsError

NEEDS_MODEL_FILE = {"eager", "compile"}  # the other formats are archived without the model definition


def test_every_version_has_its_own_versioned_archive(registry, store):
    assert sorted(p.name for p in store.glob("*.mar")) == sorted(f"{mv.key}.mar" for mv in registry.all_versions())
    for mv in registry.all_versions():
        path = mv.archive_path(store)
        manifest = mar.manifest_of(path)
        if mv.own_handler:  # tests/test_own_handler.py
            assert manifest["handler"] == mv.handler_file.name
            continue
        assert (manifest["modelName"], manifest["modelVersion"]) == (mv.name, mv.version)
        assert manifest["handler"] == "image_handler.py"
        assert mar.archive_format(path) == mv.format  # built in the format the registry names
        assert manifest.get("modelFile") == (mv.model_def.name if mv.format in NEEDS_MODEL_FILE else None)


def test_archives_are_flat_and_carry_the_handler_config(registry, store):
    for mv in (mv for mv in registry.all_versions() if not mv.own_handler):  # own handlers: tests/test_own_handler.py
        with zipfile.ZipFile(mv.archive_path(store)) as archive_file:
            names = set(archive_file.namelist())
            serialized = mar.manifest_of(mv.archive_path(store))["serializedFile"]
            expected = {"image_handler.py", "contract.py", "image_io.py", "placement.py", serialized, "model-config.yaml"}
            if mv.format in NEEDS_MODEL_FILE:
                assert serialized == mv.weights.name
                expected.add(mv.model_def.name)
            assert expected <= names
            import yaml

            config = yaml.safe_load(archive_file.read("model-config.yaml"))
        metadata = json.loads(mv.metadata.read_text())
        assert config["handler"]["labels"] == metadata["labels"]
        assert config["handler"]["mean"] == metadata["preprocess"]["mean"]
        assert config["handler"]["top_k"] == mv.handler["top_k"]
        assert "minWorkers" not in config and "batchSize" not in config  # serving settings stay in the server config


def test_a_built_archive_verifies(registry, store):
    mv = registry.get("fashion", "2.0")
    report = verify.check(mv.archive_path(store), mv)
    assert [row["sample"] for row in report.samples] == [path.name for path, _ in verify.sample_files(mv)]
    assert report.images == len(verify.sample_files(mv)) + len(verify.eval_files(mv))


def with_member_replaced(source, dest, member, data):
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(dest, "w") as out:
        for item in src.infolist():
            out.writestr(item, data if item.filename == member else src.read(item.filename))
    return dest


def test_verification_catches_corrupted_weights_inside_an_archive(registry, store, tmp_path):
    mv = registry.get("fashion", "1.0")
    state = torch.load(mv.weights, weights_only=True)
    state["fc3.bias"] = state["fc3.bias"] + torch.linspace(-3, 3, 10)  # still loads, answers differently
    buffer = tmp_path / "tampered.pt"
    torch.save(state, buffer)
    bad = with_member_replaced(mv.archive_path(store), tmp_path / "fashion-1.0.mar", mv.weights.name, buffer.read_bytes())
    with pytest.raises(ArchiveError, match="source model"):
        verify.check(bad, mv)


def test_verification_catches_truncated_weights(registry, store, tmp_path):
    mv = registry.get("fashion", "1.0")
    bad = with_member_replaced(mv.archive_path(store), tmp_path / "fashion-1.0.mar", mv.weights.name,
                               mv.weights.read_bytes()[:1000])
    with pytest.raises(ArchiveError, match="a worker cannot load this archive"):
        verify.check(bad, mv)


def copy_version(mv, tmp_path, **changes):
    """A registry entry whose weights and samples live in tmp_path (so the test can damage them)."""
    (tmp_path / "weights").mkdir(exist_ok=True)
    weights_file = tmp_path / "weights" / mv.weights.name
    shutil.copy(mv.weights, weights_file)
    shutil.copy(mv.metadata, weights_file.with_suffix(".json"))
    return dataclasses.replace(mv, weights=weights_file, **changes)


def test_a_handler_that_fails_to_import_leaves_no_archive(registry, tmp_path):
    mv = registry.get("digits", "1.0")
    handlers = tmp_path / "handlers"
    shutil.copytree(shipped.HANDLERS_DIR, handlers, ignore=shutil.ignore_patterns("__pycache__"))
    (handlers / "image_io.py").write_text("import a_module_that_does_not_exist\n")
    store = tmp_path / "store"
    with pytest.raises(ArchiveError, match="cannot load this archive.*a_module_that_does_not_exist"):
        archive.build(mv, store, handlers_dir=handlers)
    assert list(store.glob("*")) == []


def test_weights_that_do_not_match_their_metadata_are_refused(registry, tmp_path):
    mv = copy_version(registry.get("digits", "1.0"), tmp_path)
    with open(mv.weights, "ab") as f:
        f.write(b"\0")
    with pytest.raises(WeightsError) as caught:
        archive.build(mv, tmp_path / "store")
    expected = json.loads(mv.metadata.read_text())["sha256"]
    assert caught.value.message == (f"{mv.weights}: sha256 {files.sha256(mv.weights)[:12]}... does not match "
                                    f"digits-1.0.json ({expected[:12]}...): the weights were changed or corrupted")
    assert caught.value.hint == "git checkout digits-1.0.pt or retrain with: python -m marforge train digits 1.0"
    assert not (tmp_path / "store" / "digits-1.0.mar").exists()


def test_a_pickled_model_is_refused_with_a_conversion_hint(registry, tmp_path):
    mv = copy_version(registry.get("digits", "1.0"), tmp_path)
    torch.save(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)), mv.weights)  # a whole pickled model
    metadata = json.loads(mv.metadata.read_text())
    metadata["sha256"] = files.sha256(mv.weights)
    mv.metadata.write_text(json.dumps(metadata))
    with pytest.raises(WeightsError, match="not a plain state_dict") as caught:
        archive.build(mv, tmp_path / "store")
    assert caught.value.message.startswith(f"{mv.weights}: not a plain state_dict loadable with weights_only=True (")
    assert caught.value.hint == ("if you trust the file, convert it once: "
                                 "torch.save(torch.load(path, weights_only=False).state_dict(), path)")


def test_registry_rejects_unknown_keys_and_missing_defaults(tmp_path):
    path = tmp_path / "models.toml"
    path.write_text('[models.a]\ndefault_version = "1.0"\n[models.a.versions."1.0"]\nmodel_def = "m.py"\nworkers = 2\n')
    with pytest.raises(RegistryError, match="unknown key.*workers"):
        registry_module.load(path)
    path.write_text('[models.a]\ndefault_version = "2.0"\n[models.a.versions."1.0"]\nmodel_def = "m.py"\n')
    with pytest.raises(RegistryError, match="default_version '2.0' is not one of its versions"):
        registry_module.load(path)
