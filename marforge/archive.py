"""Build and verify versioned TorchServe archives: `model_store/<name>-<version>.mar`.

`build` checks the weights against their metadata (sha256, plain state_dict), writes the archive's
model-config.yaml (the `handler:` section: preprocessing and labels from the weights' metadata,
top-k and pixel limit from the registry), runs torch-model-archiver in a private temp dir (it always
writes `<model-name>.mar` and stages in `$TMPDIR/<model-name>`, so parallel builds would collide),
verifies the result and only then moves it into place. Serving settings (workers, batching) are not
baked in: TorchServe lets model-config.yaml override them, and they belong to the server's config.

`verify` unpacks an archive, loads it as a worker does, predicts the model's sample images and
compares each answer with the source model run in-process: same top-1, probabilities within 1e-5.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import yaml

from marforge.errors import ArchiveError
from marforge.weights import build_model, import_file, read_metadata
from marforge.worker import LoadedArchive

HANDLERS_DIR = Path(__file__).resolve().parent.parent / "handlers"
HANDLER_FILE = "image_handler.py"
TOLERANCE = 1e-5


def handler_section(mv, metadata):
    """The `handler:` section of model-config.yaml for one version."""
    preprocess = metadata["preprocess"]
    return {
        "image_size": list(preprocess["image_size"]),
        "color": preprocess["color"],
        "mean": list(preprocess["mean"]),
        "std": list(preprocess["std"]),
        "labels": list(metadata["labels"]),
        **mv.handler,
    }


def build(mv, model_store, handlers_dir=HANDLERS_DIR):
    """Build, verify and install `<model_store>/<name>-<version>.mar`; returns its path."""
    metadata = read_metadata(mv)
    model_store = Path(model_store)
    model_store.mkdir(parents=True, exist_ok=True)
    target = mv.archive_path(model_store)
    with tempfile.TemporaryDirectory(prefix=f"marforge-{mv.key}-") as work:
        work = Path(work)
        config = work / "model-config.yaml"
        config.write_text(yaml.safe_dump({"handler": handler_section(mv, metadata)}, sort_keys=False))
        handlers_dir = Path(handlers_dir)
        extras = sorted(str(p) for p in handlers_dir.glob("*.py") if p.name != HANDLER_FILE)
        command = [
            str(Path(sys.executable).with_name("torch-model-archiver")),
            "--model-name", mv.name, "--version", mv.version,
            "--model-file", str(mv.model_def), "--serialized-file", str(mv.weights),
            "--handler", str(handlers_dir / HANDLER_FILE), "--config-file", str(config),
            "--export-path", str(work), "--force",
        ]
        if extras:
            command += ["--extra-files", ",".join(extras)]
        (work / "tmp").mkdir()
        result = subprocess.run(command, capture_output=True, text=True,
                                env={**os.environ, "TMPDIR": str(work / "tmp")})
        built = work / f"{mv.name}.mar"
        if result.returncode != 0 or not built.is_file():
            raise ArchiveError(f"torch-model-archiver failed for {mv.key}:\n{result.stderr.strip()}")
        verify(built, mv)
        staged = target.with_suffix(".mar.partial")
        shutil.copyfile(built, staged)
        os.replace(staged, target)  # atomic: a reader never sees half an archive
    return target


def manifest_of(mar_path):
    with zipfile.ZipFile(mar_path) as archive:
        return json.loads(archive.read("MAR-INF/MANIFEST.json"))


def sample_files(mv):
    """The model's committed sample images with their true labels: [(path, label)]."""
    labels_file = mv.samples / "labels.json"
    if not labels_file.is_file():
        raise ArchiveError(f"{labels_file}: no sample images for {mv.name}", "python -m marforge.train --samples")
    return [(mv.samples / name, label) for name, label in json.loads(labels_file.read_text()).items()]


def verify(mar_path, mv):
    """Check an archive against its source model on the sample images; raise ArchiveError if it differs.

    Returns one dict per sample with the archive's answer, for reporting.
    """
    manifest = manifest_of(mar_path)["model"]
    if (manifest.get("modelName"), manifest.get("modelVersion")) != (mv.name, mv.version):
        raise ArchiveError(f"{mar_path}: manifest says {manifest.get('modelName')} "
                           f"{manifest.get('modelVersion')}, expected {mv.name} {mv.version}")
    samples = sample_files(mv)
    payloads = [{"body": path.read_bytes()} for path, _ in samples]
    try:
        with LoadedArchive(mar_path) as loaded:
            answers = loaded.predict(payloads)
            config = loaded.service.context.model_yaml_config["handler"]
    except Exception as exc:  # the worker would die the same way: report it as a failed check
        raise ArchiveError(f"{mar_path}: a worker cannot load this archive: {type(exc).__name__}: {exc}",
                           "read the error above; fix the handler, model file or weights and rebuild") from None
    expected = source_probabilities(mv, config, [path for path, _ in samples])
    report = []
    for (path, _), answer, probs in zip(samples, answers, expected):
        if answer.status != 200:
            raise ArchiveError(f"{mar_path}: sample {path.name} got HTTP {answer.status}: {answer.body[:300]!r}")
        predictions = answer.json()["predictions"]
        if predictions[0]["index"] != int(probs.argmax()):
            raise ArchiveError(f"{mar_path}: sample {path.name}: archive says {predictions[0]['label']}, "
                               f"source model says index {int(probs.argmax())}")
        for p in predictions:
            if abs(p["probability"] - float(probs[p["index"]])) > TOLERANCE:
                raise ArchiveError(f"{mar_path}: sample {path.name}: probability of {p['label']} is "
                                   f"{p['probability']:.7f} in the archive, {float(probs[p['index']]):.7f} "
                                   f"in the source model (tolerance {TOLERANCE})")
        report.append({"sample": path.name, "top1": predictions[0]})
    return report


def source_probabilities(mv, handler_config, image_paths):
    """Class probabilities of the source model (model_defs + weights) with the handler's preprocessing."""
    import torch

    image_io = import_file(HANDLERS_DIR / "image_io.py", "marforge_source_image_io")
    config = image_io.HandlerConfig.from_dict(handler_config)
    model = build_model(mv.model_def, mv.weights)
    inputs = torch.stack([image_io.prepare({"body": p.read_bytes()}, config) for p in image_paths])
    with torch.inference_mode():
        return torch.softmax(model(inputs).float(), dim=1)
