"""Shared fixtures: the registry, archives built once per session, and one real TorchServe.

Tiers (see README): image_io/handler/client tests need no server; archive tests build real .mar
files into a temp store; tests marked `integration` talk to one TorchServe per session, started on
free ports with its own TMPDIR/TEMP and log dir and stopped by its own pid.
"""

import base64
import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "handlers"))  # the handler imports its modules as top-level modules

from marforge.archiving import archive, verify  # noqa: E402
from marforge.project import Project  # noqa: E402
from marforge.serve import launch, process  # noqa: E402
from marforge.serve.rundir import RunDir  # noqa: E402


def project_at(model_store, run_dir, config=ROOT / "config.properties", registry=ROOT / "models.toml"):
    """The repository's project with its model store, run dir and base config moved (for a test's server)."""
    return Project.at(registry, model_store=model_store, run_dir=run_dir, config=config)


def start_server(project, versions=None, timeout=240):
    """A real TorchServe for `project` on free ports (the caller stops it: process.stop(RunDir(...)))."""
    return launch.serve(project, versions=versions, ports=process.free_listeners(), timeout=timeout)


@pytest.fixture(scope="session")
def registry():
    return Project.at(ROOT / "models.toml").registry


@pytest.fixture(scope="session")
def store(registry, tmp_path_factory):
    """A model store holding every registry version, built and verified by marforge."""
    path = tmp_path_factory.mktemp("model_store")
    for mv in registry.all_versions():
        archive.build(mv, path)
    return path


def stage_model_dir(mv, dest, handler=None):
    """Lay out `dest` as TorchServe unpacks an archive (without running the archiver).

    `handler` overrides keys of the archive's `handler:` section (e.g. {"half_precision": True}).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    from marforge import shipped

    handler_file, modules = shipped.files()
    for path in (handler_file, *modules):
        shutil.copy(path, dest)
    shutil.copy(mv.model_def, dest)
    shutil.copy(mv.weights, dest)
    metadata = json.loads(mv.metadata.read_text())
    import yaml

    section = {**archive.handler_section(mv, metadata), **(handler or {})}
    (dest / "model-config.yaml").write_text(yaml.safe_dump({"handler": section}))
    (dest / "MAR-INF").mkdir(exist_ok=True)
    (dest / "MAR-INF" / "MANIFEST.json").write_text(json.dumps({"model": {
        "modelName": mv.name, "modelVersion": mv.version, "handler": "image_handler.py",
        "modelFile": mv.model_def.name, "serializedFile": mv.weights.name, "configFile": "model-config.yaml",
    }}))
    return dest


@pytest.fixture(scope="session")
def ports():
    return process.free_listeners()


@pytest.fixture(scope="session")
def live_server(store, ports, tmp_path_factory):
    """One real TorchServe (Java frontend + Python workers) serving every registry version."""
    run_dir = tmp_path_factory.mktemp("run")
    started = launch.serve(project_at(store, run_dir), ports=ports, timeout=240)
    try:
        yield started
    finally:
        process.stop(RunDir(run_dir))


def task_of(mv):
    """The task a version's weights were trained for (their metadata's), multiclass when it says none."""
    from marforge.archiving.weights import task_of

    return task_of(mv)


def classifiers(registry):
    """The registry's classification versions (multiclass and multilabel): what classification-only checks run on."""
    return [mv for mv in registry.all_versions() if task_of(mv) in ("multiclass", "multilabel")]


@pytest.fixture(scope="session")
def samples(registry):
    """{model name: [(path, true label)]} for the committed sample images."""
    return {name: verify.sample_files(next(iter(m.versions.values()))) for name, m in registry.models.items()}


@pytest.fixture(scope="session")
def measurements():
    """Numbers a test measured, printed at the end of the run (e.g. worker recovery time)."""
    return MEASURED


MEASURED = {}


def pytest_terminal_summary(terminalreporter):
    if MEASURED:
        terminalreporter.section("measured")
        for name, value in MEASURED.items():
            terminalreporter.write_line(f"{name}: {value}")


def temp_project(folder, registry_text):
    """A project in `folder` with the repository's model definitions and a models.toml of `registry_text`."""
    (folder / "models.toml").write_text(registry_text)
    shutil.copytree(ROOT / "model_defs", folder / "model_defs")
    return Project.at(folder / "models.toml")


def assert_triton_gets_400_for_a_bad_image(client, model="fashion"):
    """Triton's v2 client sends bytes that are not an image: the answer is our 400 InvalidImage, in v2's shape."""
    import numpy as np
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    data = triton.InferInput("data", [1], "BYTES")
    data.set_data_from_numpy(np.array([base64.b64encode(b"not an image")], dtype=object), binary_data=False)
    with pytest.raises(InferenceServerException) as caught:
        client.infer(model, [data])
    assert caught.value.status() == "400" and caught.value.message().startswith("InvalidImage: ")
