"""Shared fixtures: the registry, archives built once per session, and one real TorchServe.

Tiers (see README): image_io/handler/client tests need no server; archive tests build real .mar
files into a temp store; tests marked `integration` talk to one TorchServe per session, started on
free ports with its own TMPDIR/TEMP and log dir and stopped by its own pid.
"""

import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "handlers"))  # the handler imports image_io as a top-level module

from marforge import archive, registry as registry_module, server  # noqa: E402


@pytest.fixture(scope="session")
def registry():
    return registry_module.load(ROOT / "models.toml")


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
    for handler_file in (ROOT / "handlers").glob("*.py"):
        shutil.copy(handler_file, dest)
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
    names = ("inference", "management", "metrics", "grpc_inference", "grpc_management")
    return dict(zip(names, server.free_ports(len(names))))


@pytest.fixture(scope="session")
def live_server(registry, store, ports, tmp_path_factory):
    """One real TorchServe (Java frontend + Python workers) serving every registry version."""
    run_dir = tmp_path_factory.mktemp("run")
    started = server.serve(registry, store, run_dir, ROOT / "config.properties", ports=ports, timeout=240)
    try:
        yield started
    finally:
        server.stop(run_dir)


@pytest.fixture(scope="session")
def samples(registry):
    """{model name: [(path, true label)]} for the committed sample images."""
    return {name: archive.sample_files(next(iter(m.versions.values()))) for name, m in registry.models.items()}


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
