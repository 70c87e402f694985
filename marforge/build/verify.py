"""Verify an archive against its source model before anything serves it.

`check` unpacks an archive, loads it as a worker does (worker.py), predicts the model's sample
images and its eval set in batches of the version's batch_size, and compares each answer with the
eager source model (model definition + weights) run in-process through the same preprocessing:
the same top-1 and probabilities within 1e-5 for an eager archive, each other format within its
own tolerance (variants.TOLERANCES). For a `compile` archive it also checks that inductor really
compiled the model (TorchServe falls back to eager with a warning).
"""

import dataclasses
import time
import zipfile

from marforge import labelled, shipped
from marforge.build import variants
from marforge.build.mar import archive_format, manifest_of
from marforge.build.weights import build_model
from marforge.build.worker import LoadedArchive
from marforge.errors import ArchiveError, DataError


@dataclasses.dataclass(frozen=True)
class Verification:
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
    build_s: float = None  # set by archive.build

    def with_build_time(self, seconds):
        return dataclasses.replace(self, build_s=seconds)

    def summary(self):
        compiled = f", inductor compiled {self.compiled_graphs} graph(s)" if self.compiled_graphs is not None else ""
        return (f"{self.fmt}: {self.images} images, top-1 agreement {self.top1_agreement:.4f} "
                f"(>= {self.tolerance.top1_agreement}), max probability difference {self.max_probability_diff:.2e} "
                f"(<= {self.tolerance.probability}), eval accuracy {self.accuracy:.4f}, "
                f"model file {self.serialized_bytes} bytes{compiled}")


def sample_files(mv):
    """The version's sample images with their true labels: [(path, label)]."""
    return labelled.read(mv.samples, f"sample images for {mv.name}",
                         f"put a few labelled images in {mv.samples}/ with a labels.json (file -> label)")


def eval_files(mv):
    """The model's held-out evaluation images (eval/<name>/) with their true labels: [(path, label)]."""
    return labelled.read(mv.eval_dir, f"eval images for {mv.name}",
                         f"put labelled held-out images in {mv.eval_dir}/ with a labels.json (file -> label)")


def check(mar_path, mv):
    """Check an archive against the eager source model on the samples and the eval set; a Verification."""
    started = time.monotonic()
    manifest = manifest_of(mar_path)
    if (manifest.get("modelName"), manifest.get("modelVersion")) != (mv.name, mv.version):
        raise ArchiveError(f"{mar_path}: manifest says {manifest.get('modelName')} "
                           f"{manifest.get('modelVersion')}, expected {mv.name} {mv.version}")
    fmt = archive_format(mar_path)
    try:
        samples, evals = sample_files(mv), eval_files(mv)
    except DataError as exc:
        raise ArchiveError(f"{mar_path}: cannot verify: {exc.message}", exc.hint) from None
    paths = [path for path, _ in samples + evals]
    answers, config, graphs = run_loaded(mar_path, mv, fmt, paths)
    for path, answer in zip(paths, answers):
        if answer.status != 200:
            raise ArchiveError(f"{mar_path}: image {path.name} got HTTP {answer.status}: {answer.body[:300]!r}")
    top1 = [answer.json()["predictions"] for answer in answers]
    expected = source_probabilities(mv, config, paths)
    agreement, max_diff = compare(mar_path, fmt, paths, top1, expected)
    correct = [predictions[0]["label"] == label for predictions, (_, label) in zip(top1[len(samples):], evals)]
    return Verification(fmt, [{"sample": path.name, "top1": predictions[0]}
                              for (path, _), predictions in zip(samples, top1)],
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

    image_io = shipped.module("image_io")
    config = shipped.contract().HandlerConfig.from_dict(handler_config)
    model = build_model(mv.model_def, mv.weights)
    inputs = torch.stack([image_io.prepare({"body": p.read_bytes()}, config) for p in image_paths])
    with torch.inference_mode():
        return torch.softmax(model(inputs).float(), dim=1)
