"""Archive formats: every format of fashion 1.0 (MLP) and 2.0 (ConvNet) is built, named and verified
against the eager source model on the eval set; wrong variants and silent compile fallbacks fail.

torch.compile is built for the MLP only: inductor needs ~20 s per model on 2 cores with a cold cache.
"""

import dataclasses
import zipfile

import pytest
import torch
import yaml

from marforge import registry as registry_module
from marforge.archiving import archive, mar, variants, verify
from marforge.archiving.weights import build_model
from marforge.archiving.worker import LoadedArchive
from marforge.errors import ArchiveError, RegistryError

FORMATS = variants.formats()
BUILDS = [("1.0", fmt) for fmt in FORMATS] + [("2.0", fmt) for fmt in FORMATS if fmt not in variants.COMPILED]
SELF_CONTAINED = {"torchscript", "onnx", "quantized", "export"}  # archived without a model file


@pytest.fixture(scope="module")
def built(registry, tmp_path_factory, measurements):
    """{(version, format): (path, report)} for every build, all in one store."""
    store = tmp_path_factory.mktemp("variant_store")
    results = {}
    for version, fmt in BUILDS:
        mv = registry.get("fashion", version)
        path, report = archive.build(mv, store, fmt=fmt)
        results[version, fmt] = path, report
        measurements[f"fashion {version} {fmt}"] = (f"build {report.build_s:.1f}s, verify {report.verify_s:.1f}s; "
                                                    f"{report.summary()}")
    return results


def config_of(mar_path):
    with zipfile.ZipFile(mar_path) as archive_file:
        return yaml.safe_load(archive_file.read("model-config.yaml"))


def test_formats_are_named_after_the_registry_format(registry, built):
    store = next(iter(built.values()))[0].parent
    expected = {registry.get("fashion", version).archive_path(store, fmt).name for version, fmt in BUILDS}
    assert {f"fashion-{version}.mar" for version, _ in BUILDS} <= expected  # the registry's own format ...
    assert len(expected) == len(BUILDS)  # ... and every other one under its own name
    assert {p.name for p in store.glob("*")} == expected  # and no partial files left over
    for (version, fmt), (path, _) in built.items():
        assert path == registry.get("fashion", version).archive_path(store, fmt)
        manifest = mar.manifest_of(path)
        assert (manifest["modelName"], manifest["modelVersion"]) == ("fashion", version)
        assert mar.archive_format(path) == fmt


def test_self_contained_formats_load_without_a_model_file_and_carry_the_eager_one_for_explanations(registry, built):
    suffix = {"eager": ".pt", "compile": ".pt", "cudagraphs": ".pt", "torchscript": ".pt", "quantized": ".pt",
              "onnx": ".onnx", "export": ".pt"}
    for (version, fmt), (path, _) in built.items():
        mv = registry.get("fashion", version)
        manifest = mar.manifest_of(path)
        with zipfile.ZipFile(path) as archive_file:
            names = set(archive_file.namelist())
        assert ("modelFile" in manifest) == (fmt not in SELF_CONTAINED)  # BaseHandler loads the serialized file
        assert manifest["serializedFile"].endswith(suffix[fmt])
        assert {mv.model_def.name, mv.weights.name} <= names  # the eager model, as model file or for explanations
        stamp = config_of(path)["marforge"]
        assert stamp == ({"format": fmt, "eager": {"model_file": mv.model_def.name, "weights": mv.weights.name}}
                         if fmt in SELF_CONTAINED else {"format": fmt})


def test_compile_asks_torchserve_for_inductor(built):
    assert config_of(built["1.0", "compile"][0])["pt2"] == {"compile": {"enable": True, "backend": "inductor"}}
    assert "pt2" not in config_of(built["1.0", "eager"][0])
    assert config_of(built["1.0", "cudagraphs"][0])["pt2"] == {
        "compile": {"enable": True, "backend": "inductor", "mode": "reduce-overhead"}}


def test_every_format_agrees_with_the_eager_model_on_the_eval_set(built):
    for (version, fmt), (_, report) in built.items():
        assert report.images == 304  # 4 samples + 300 eval images
        assert report.agreement >= variants.TOLERANCES[fmt].agreement
        assert report.max_diff <= variants.TOLERANCES[fmt].value
        if fmt in ("eager", "torchscript", "onnx", "compile"):
            assert report.agreement == 1.0 and report.max_diff <= 1e-4
        assert report.accuracy >= 0.85, (version, fmt)


def test_compile_really_ran_through_inductor(built):
    assert built["1.0", "compile"][1].compiled_graphs >= 1
    assert built["1.0", "cudagraphs"][1].compiled_graphs >= 1  # reduce-overhead mode compiles the same way
    assert all(report.compiled_graphs is None for (_, fmt), (_, report) in built.items() if fmt not in variants.COMPILED)


def test_quantized_weights_are_smaller(registry, built):
    for version in ("1.0", "2.0"):
        eager_bytes = registry.get("fashion", version).weights.stat().st_size
        assert built[version, "quantized"][1].serialized_bytes < 0.4 * eager_bytes


def test_a_cpu_worker_runs_torchscript_frozen_and_rewritten(built):
    """The archive holds the plain traced model; the worker freezes it and rewrites it for oneDNN."""
    mar_path = built["2.0", "torchscript"][0]
    with zipfile.ZipFile(mar_path) as archive_file:
        serialized = mar.manifest_of(mar_path)["serializedFile"]
        archive_file.extract(serialized, mar_path.parent / "extracted")
    assert list(torch.jit.load(str(mar_path.parent / "extracted" / serialized)).parameters())  # portable: not frozen
    with LoadedArchive(mar_path) as loaded:
        model = loaded.handler.model
        assert not list(model.parameters())  # frozen: the weights are constants of the graph
        assert "mkldnn" in str(model.graph)  # convolutions run through oneDNN


def test_onnxruntime_uses_the_workers_share_of_the_cores(built, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # what OMP_NUM_THREADS=1 gives a worker
    with LoadedArchive(built["2.0", "onnx"][0]) as loaded:
        assert loaded.handler.model.get_session_options().intra_op_num_threads == 1


def test_verify_reads_the_format_from_the_archive(registry, built):
    mv = registry.get("fashion", "2.0")
    rows = verify.check(built["2.0", "onnx"][0], mv).samples
    assert [row["sample"] for row in rows] == [path.name for path, _ in verify.sample_files(mv)]


def shuffled_model(mv):
    """The source model with its output rows permuted: it loads and runs, and answers wrongly."""
    model = build_model(mv.model_def, mv.weights)
    last = list(model.children())[-1]
    with torch.no_grad():
        last.weight.copy_(last.weight[torch.randperm(10, generator=torch.Generator().manual_seed(1))])
    return model


@pytest.mark.parametrize("fmt", ["torchscript", "quantized", "onnx"])
def test_a_wrong_variant_fails_and_leaves_nothing(registry, tmp_path, monkeypatch, fmt):
    monkeypatch.setattr(variants, "source_model", shuffled_model)
    store = tmp_path / "store"
    with pytest.raises(ArchiveError, match="disagree with the source model"):
        archive.build(registry.get("fashion", "1.0"), store, fmt=fmt)
    assert list(store.glob("*")) == []


def test_a_compile_that_falls_back_to_eager_fails(registry, tmp_path, monkeypatch):
    def broken_compile(model, **options):
        raise RuntimeError("no inductor here")

    monkeypatch.setattr(torch, "compile", broken_compile)  # BaseHandler catches this and only warns
    store = tmp_path / "store"
    with pytest.raises(ArchiveError, match="torch.compile failed .* runs the eager FashionMLP"):
        archive.build(registry.get("fashion", "1.0"), store, fmt="compile")
    assert list(store.glob("*")) == []


def test_a_compiled_model_that_never_reached_inductor_is_caught(registry):
    model = torch.compile(variants.source_model(registry.get("fashion", "1.0")), backend="inductor")
    with pytest.raises(ArchiveError, match="fell back to eager: dynamo captured no graph"):
        variants.compile_outcome(model, variants.compile_counts())  # nothing ran since the snapshot


def test_the_registry_format_is_the_archive_the_server_loads(registry, tmp_path):
    mv = dataclasses.replace(registry.get("fashion", "1.0"), format="onnx")
    assert archive.build(mv, tmp_path)[0].name == "fashion-1.0.mar"
    assert mar.archive_format(tmp_path / "fashion-1.0.mar") == "onnx"
    assert mv.archive_path(tmp_path, "eager").name == "fashion-1.0-eager.mar"
    with pytest.raises(ArchiveError, match="unknown archive format 'tensorrt'"):
        archive.build(mv, tmp_path, fmt="tensorrt")


def test_registry_format_defaults_overrides_and_errors(tmp_path):
    path = tmp_path / "models.toml"
    path.write_text('[models.a]\ndefault_version = "1.0"\nformat = "quantized"\n'
                    '[models.a.versions."1.0"]\nmodel_def = "m.py"\n'
                    '[models.a.versions."2.0"]\nmodel_def = "m.py"\nformat = "onnx"\n'
                    '[models.b]\ndefault_version = "1.0"\n[models.b.versions."1.0"]\nmodel_def = "m.py"\n')
    loaded = registry_module.load(path)
    assert [mv.format for mv in loaded.all_versions()] == ["quantized", "onnx", "eager"]
    assert loaded.get("a", "2.0").eval_dir == tmp_path / "eval" / "a"
    path.write_text('[models.a]\ndefault_version = "1.0"\n[models.a.versions."1.0"]\nmodel_def = "m.py"\nformat = "trt"\n')
    formats = "eager, torchscript, onnx, compile, quantized, cudagraphs, export"
    with pytest.raises(RegistryError, match=rf"format 'trt' is not one of {formats}$"):
        registry_module.load(path)
