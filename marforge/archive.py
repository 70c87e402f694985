"""Build and verify versioned TorchServe archives: `model_store/<name>-<version>.mar`.

`build` checks the weights against their metadata (sha256, plain state_dict), writes the serialized
file of the requested format (marforge/variants.py: eager, torchscript, onnx, compile, quantized;
the registry's `format` by default), writes the archive's model-config.yaml (the `handler:` section:
preprocessing and labels from the weights' metadata, top-k and pixel limit from the registry; plus
the format's own sections), runs torch-model-archiver in a private temp dir (it always writes
`<model-name>.mar` and stages in `$TMPDIR/<model-name>`, so parallel builds would collide),
verifies the result and only then moves it into place: the registry's own format as
`<name>-<version>.mar` (what the server loads), any other as `<name>-<version>-<format>.mar`.
Serving settings (workers, batching) are not baked in: TorchServe lets model-config.yaml override
them, and they belong to the server's config.

`verify` unpacks an archive, loads it as a worker does, predicts the model's sample images and its
eval set (eval/<name>/) in batches of the version's batch_size, and compares each answer with the
eager source model run in-process: same top-1 and probabilities within 1e-5 for an eager archive,
each other format within its own tolerance (variants.TOLERANCES). For a `compile` archive it also
checks that inductor really compiled the model (TorchServe falls back to eager with a warning).
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import yaml

from marforge import variants
from marforge.errors import ArchiveError
from marforge.weights import build_model, import_file, read_metadata
from marforge.worker import LoadedArchive

HANDLERS_DIR = Path(__file__).resolve().parent.parent / "handlers"
HANDLER_FILE = "image_handler.py"


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


def build(mv, model_store, handlers_dir=HANDLERS_DIR, fmt=None):
    """Build, verify and install `mv`'s archive in format `fmt` (default: the registry's); returns its path."""
    return build_with_report(mv, model_store, handlers_dir, fmt)[0]


def build_with_report(mv, model_store, handlers_dir=HANDLERS_DIR, fmt=None):
    """`build`, also returning the verification Report (with the build time in `build_s`)."""
    fmt = fmt or mv.format
    if fmt not in variants.FORMATS:
        raise ArchiveError(f"unknown archive format {fmt!r} for {mv.key}", f"use one of: {', '.join(variants.FORMATS)}")
    metadata = read_metadata(mv)
    model_store = Path(model_store)
    model_store.mkdir(parents=True, exist_ok=True)
    target = mv.archive_path(model_store, fmt)
    with tempfile.TemporaryDirectory(prefix=f"marforge-{mv.key}-{fmt}-") as work:
        work = Path(work)
        started = time.monotonic()
        variant = variants.prepare(mv, fmt, metadata, work)
        built = run_archiver(mv, variant, handler_section(mv, metadata), work, Path(handlers_dir))
        build_s = time.monotonic() - started
        report = check(built, mv)
        staged = target.with_suffix(".mar.partial")
        shutil.copyfile(built, staged)
        os.replace(staged, target)  # atomic: a reader never sees half an archive
    return target, dataclasses.replace(report, build_s=build_s)


def run_archiver(mv, variant, handler, work, handlers_dir):
    """Run torch-model-archiver for one variant in `work` (its private TMPDIR inside); returns the .mar."""
    config = work / "model-config.yaml"
    config.write_text(yaml.safe_dump({"handler": handler, **variant.config}, sort_keys=False))
    extras = sorted(str(p) for p in handlers_dir.glob("*.py") if p.name != HANDLER_FILE)
    command = [
        str(Path(sys.executable).with_name("torch-model-archiver")),
        "--model-name", mv.name, "--version", mv.version, *variant.archiver_args(),
        "--handler", str(handlers_dir / HANDLER_FILE), "--config-file", str(config),
        "--export-path", str(work), "--force",
    ]
    if extras:
        command += ["--extra-files", ",".join(extras)]
    (work / "tmp").mkdir()
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TMPDIR": str(work / "tmp")})
    built = work / f"{mv.name}.mar"
    if result.returncode != 0 or not built.is_file():
        raise ArchiveError(f"torch-model-archiver failed for {mv.key} ({variant.fmt}):\n{result.stderr.strip()}")
    return built


def manifest_of(mar_path):
    with zipfile.ZipFile(mar_path) as archive:
        return json.loads(archive.read("MAR-INF/MANIFEST.json"))


def sample_files(mv):
    """The model's committed sample images with their true labels: [(path, label)]."""
    return _labelled(mv.samples, f"sample images for {mv.name}")


def eval_files(mv):
    """The model's held-out evaluation images (eval/<name>/) with their true labels: [(path, label)]."""
    return _labelled(mv.eval_dir, f"eval images for {mv.name}")


def _labelled(folder, what):
    labels_file = Path(folder) / "labels.json" if folder else None
    if labels_file is None or not labels_file.is_file():
        raise ArchiveError(f"{labels_file or folder}: no {what}", "python -m marforge.train --samples")
    return [(folder / name, label) for name, label in json.loads(labels_file.read_text()).items()]


def archive_format(mar_path):
    """The format an archive was built in, as recorded in its model-config.yaml (eager if none is)."""
    with zipfile.ZipFile(mar_path) as archive:
        config_file = json.loads(archive.read("MAR-INF/MANIFEST.json"))["model"].get("configFile")
        config = yaml.safe_load(archive.read(config_file)) if config_file else None
    return ((config or {}).get("marforge") or {}).get("format", "eager")


@dataclasses.dataclass(frozen=True)
class Report:
    """What verifying one archive measured."""

    fmt: str
    samples: list  # one {"sample": file name, "top1": prediction} per sample image
    images: int  # images compared with the source model: the samples and the eval set
    top1_agreement: float  # share of them with the source model's top-1 class
    max_probability_diff: float  # over the probabilities the handler returns (top-k)
    accuracy: float  # of the archive on the eval set's true labels
    tolerance: variants.Tolerance
    serialized_bytes: int  # size of the archive's serialized model file
    verify_s: float
    compiled_graphs: int = None  # compile format: graphs inductor compiled for the batches run
    build_s: float = None  # set by build_with_report

    def summary(self):
        compiled = f", inductor compiled {self.compiled_graphs} graph(s)" if self.compiled_graphs is not None else ""
        return (f"{self.fmt}: {self.images} images, top-1 agreement {self.top1_agreement:.4f} "
                f"(>= {self.tolerance.top1_agreement}), max probability difference {self.max_probability_diff:.2e} "
                f"(<= {self.tolerance.probability}), eval accuracy {self.accuracy:.4f}, "
                f"model file {self.serialized_bytes} bytes{compiled}")


def verify(mar_path, mv):
    """Check an archive against its source model; raise ArchiveError if it differs.

    Returns one dict per sample image with the archive's answer, for reporting (`check` has the rest).
    """
    return check(mar_path, mv).samples


def check(mar_path, mv):
    """Check an archive against the eager source model on the samples and the eval set; returns a Report."""
    started = time.monotonic()
    manifest = manifest_of(mar_path)["model"]
    if (manifest.get("modelName"), manifest.get("modelVersion")) != (mv.name, mv.version):
        raise ArchiveError(f"{mar_path}: manifest says {manifest.get('modelName')} "
                           f"{manifest.get('modelVersion')}, expected {mv.name} {mv.version}")
    fmt = archive_format(mar_path)
    samples, evals = sample_files(mv), eval_files(mv)
    paths = [path for path, _ in samples + evals]
    answers, config, graphs = run_loaded(mar_path, mv, fmt, paths)
    for path, answer in zip(paths, answers):
        if answer.status != 200:
            raise ArchiveError(f"{mar_path}: image {path.name} got HTTP {answer.status}: {answer.body[:300]!r}")
    top1 = [answer.json()["predictions"] for answer in answers]
    expected = source_probabilities(mv, config, paths)
    agreement, max_diff = compare(mar_path, fmt, paths, top1, expected)
    correct = [predictions[0]["label"] == label for predictions, (_, label) in zip(top1[len(samples):], evals)]
    return Report(fmt, [{"sample": path.name, "top1": predictions[0]} for (path, _), predictions in zip(samples, top1)],
                  len(paths), agreement, max_diff, sum(correct) / len(correct), variants.TOLERANCES[fmt],
                  serialized_size(mar_path, manifest), time.monotonic() - started, graphs)


def run_loaded(mar_path, mv, fmt, paths):
    """Predict `paths` with the archive loaded as a worker does, in batches of the version's batch_size.

    Returns (answers, the handler's config, graphs inductor compiled or None when fmt is not compile).
    """
    size = mv.serving["batch_size"]
    rows = [{"body": path.read_bytes()} for path in paths]
    try:
        with LoadedArchive(mar_path, batch_size=size) as loaded:
            before = variants.compile_counts() if fmt == "compile" else None
            answers = [answer for i in range(0, len(rows), size) for answer in loaded.predict(rows[i:i + size])]
            graphs = variants.compile_outcome(loaded.handler.model, before) if fmt == "compile" else None
            return answers, loaded.service.context.model_yaml_config["handler"], graphs
    except ArchiveError as exc:
        raise ArchiveError(f"{mar_path}: {exc.message}", exc.hint) from None
    except Exception as exc:  # the worker would die the same way: report it as a failed check
        raise ArchiveError(f"{mar_path}: a worker cannot load this archive: {type(exc).__name__}: {exc}",
                           "read the error above; fix the handler, model file or weights and rebuild") from None


def compare(mar_path, fmt, paths, top1, expected):
    """Top-1 agreement and largest probability difference with the source model; raise past the tolerance."""
    tolerance = variants.TOLERANCES[fmt]
    disagree = [(path, predictions[0], int(probs.argmax()))
                for path, predictions, probs in zip(paths, top1, expected) if predictions[0]["index"] != int(probs.argmax())]
    agreement = 1 - len(disagree) / len(paths)
    if agreement < tolerance.top1_agreement:
        path, said, index = disagree[0]
        raise ArchiveError(f"{mar_path}: {len(disagree)} of {len(paths)} images disagree with the source model "
                           f"on the top-1 class ({fmt} needs agreement >= {tolerance.top1_agreement}); "
                           f"{path.name}: archive says {said['label']}, source model says index {index}")
    diffs = [(abs(p["probability"] - float(probs[p["index"]])), path, p, float(probs[p["index"]]))
             for path, predictions, probs in zip(paths, top1, expected) for p in predictions]
    worst, path, p, source = max(diffs, key=lambda d: d[0])
    if worst > tolerance.probability:
        raise ArchiveError(f"{mar_path}: image {path.name}: probability of {p['label']} is {p['probability']:.7f} "
                           f"in the archive, {source:.7f} in the source model ({fmt} tolerance {tolerance.probability})")
    return agreement, worst


def serialized_size(mar_path, manifest):
    with zipfile.ZipFile(mar_path) as archive:
        return archive.getinfo(manifest["serializedFile"]).file_size


def source_probabilities(mv, handler_config, image_paths):
    """Class probabilities of the source model (model_defs + weights) with the handler's preprocessing."""
    import torch

    image_io = import_file(HANDLERS_DIR / "image_io.py", "marforge_source_image_io")
    config = image_io.HandlerConfig.from_dict(handler_config)
    model = build_model(mv.model_def, mv.weights)
    inputs = torch.stack([image_io.prepare({"body": p.read_bytes()}, config) for p in image_paths])
    with torch.inference_mode():
        return torch.softmax(model(inputs).float(), dim=1)
