"""Verify an archive against its source model before anything serves it.

`check` unpacks an archive, loads it as a worker does (worker.py), predicts the version's sample
images and its eval set (eval/<name>/, when it has one) in batches of the version's batch_size, and
compares every answer with the eager source model (model definition + weights) run in-process
through torchvision's own transforms (Resize, CenterCrop or TenCrop, ToTensor, Normalize: an
implementation independent of the handler's): the probabilities the answer carries (the top-k of a
multiclass model, every label of a multilabel one) within 1e-5 for an eager archive and each other
format's own tolerance (variants.TOLERANCES), and the same decision (top-1 label, or set of positive
labels) on at least the tolerance's share of images. Labelled eval images are also scored:
accuracy for one label per image, mean AUROC for several. For a `compile` or `cudagraphs` archive
(variants.COMPILED) it also checks that inductor really compiled the model (TorchServe falls back to
eager with a warning).
"""

import dataclasses
import time
import zipfile

from marforge import labelled, scores, shipped
from marforge.archiving import variants
from marforge.archiving.mar import archive_format, manifest_of
from marforge.archiving.weights import build_model
from marforge.archiving.worker import LoadedArchive
from marforge.errors import ArchiveError, DataError


@dataclasses.dataclass(frozen=True, kw_only=True)
class Verification:
    """What verifying one archive measured (built by field name: no positional arguments)."""

    fmt: str
    samples: list  # one {"sample": file name, "top1": the most likely label's prediction} per sample image
    images: int  # images compared with the source model: the samples and the eval set
    top1_agreement: float  # share of them with the source model's decision (top-1, or positive set)
    max_probability_diff: float  # over the probabilities the handler returns
    accuracy: float  # of a multiclass archive on the eval set's true labels (None: no labelled eval set)
    tolerance: variants.Tolerance
    serialized_bytes: int  # size of the archive's serialized model file
    verify_s: float
    compiled_graphs: int | None = None  # compile format: graphs inductor compiled for the batches run
    build_s: float | None = None  # set by archive.build
    mean_auroc: float | None = None  # of a multilabel archive on a labelled eval set
    notes: tuple = ()  # what could not be checked, and why

    def with_build_time(self, seconds):
        return dataclasses.replace(self, build_s=seconds)

    def summary(self):
        compiled = f", inductor compiled {self.compiled_graphs} graph(s)" if self.compiled_graphs is not None else ""
        quality = (f", eval accuracy {self.accuracy:.4f}" if self.accuracy is not None else "") + (
            f", eval mean AUROC {self.mean_auroc:.4f}" if self.mean_auroc is not None else "")
        notes = "".join(f"; {note}" for note in self.notes)
        return (f"{self.fmt}: {self.images} images, top-1 agreement {self.top1_agreement:.4f} "
                f"(>= {self.tolerance.top1_agreement}), max probability difference {self.max_probability_diff:.2e} "
                f"(<= {self.tolerance.probability}){quality}, model file {self.serialized_bytes} bytes{compiled}{notes}")


def sample_files(mv):
    """The version's sample images with their labels: [(path, label)] (a label may be None: unlabelled)."""
    return labelled.read(mv.samples, f"sample images for {mv.name}",
                         f"put a few images in {mv.samples}/ with a labels.json (file -> label, or null)")


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
        samples = sample_files(mv)
        evals = eval_files(mv) if labelled.exists(mv.eval_dir) else []
    except DataError as exc:
        raise ArchiveError(f"{mar_path}: cannot verify: {exc.message}", exc.hint) from None
    notes = () if evals else (f"no eval set in {mv.eval_dir}: compared on the {len(samples)} sample(s) only",)
    paths = [path for path, _ in samples + evals]
    answers, section, graphs = run_loaded(mar_path, mv, fmt, paths)
    for path, answer in zip(paths, answers):
        if answer.status != 200:
            raise ArchiveError(f"{mar_path}: image {path.name} got HTTP {answer.status}: {answer.body[:300]!r}")
    config = shipped.contract().HandlerConfig.from_dict(section)
    bodies = [answer.json() for answer in answers]
    expected = source_probabilities(mv, config, paths)
    agreement, max_diff = compare(mar_path, fmt, config, paths, bodies, expected)
    accuracy, auroc = quality(config, bodies[len(samples):], [label for _, label in evals])
    tops = [{"sample": path.name, "top1": max(body["predictions"], key=lambda p: p["probability"])}
            for (path, _), body in zip(samples, bodies)]
    return Verification(fmt=fmt, samples=tops, images=len(paths), top1_agreement=agreement,
                        max_probability_diff=max_diff, accuracy=accuracy, tolerance=variants.TOLERANCES[fmt],
                        serialized_bytes=serialized_size(mar_path, manifest), verify_s=time.monotonic() - started,
                        compiled_graphs=graphs, mean_auroc=auroc, notes=notes)


def run_loaded(mar_path, mv, fmt, paths):
    """Predict `paths` with the archive loaded as a worker does, in batches of the version's batch_size.

    Returns (answers, the handler's config section, graphs inductor compiled or None when fmt is not compile).
    """
    size = mv.serving["batch_size"]
    rows = [{"body": path.read_bytes()} for path in paths]
    try:
        with LoadedArchive(mar_path, batch_size=size) as loaded:
            before = variants.compile_counts() if fmt in variants.COMPILED else None
            answers = [answer for i in range(0, len(rows), size) for answer in loaded.predict(rows[i:i + size])]
            graphs = variants.compile_outcome(loaded.handler.model, before) if fmt in variants.COMPILED else None
            return answers, loaded.service.context.model_yaml_config["handler"], graphs
    except ArchiveError as exc:
        raise ArchiveError(f"{mar_path}: {exc.message}", exc.hint) from None
    except Exception as exc:  # the worker would die the same way: report it as a failed check
        raise ArchiveError(f"{mar_path}: a worker cannot load this archive: {type(exc).__name__}: {exc}",
                           "read the error above; fix the handler, model file or weights and rebuild") from None


def compare(mar_path, fmt, config, paths, bodies, expected):
    """Decision agreement and largest probability difference with the source model; raise past the tolerance."""
    tolerance, task = variants.TOLERANCES[fmt], shipped.module("classification")
    disagree, worst = [], (0.0, None, None, None, None)
    for path, body, probs in zip(paths, bodies, expected.tolist()):
        said, source = task.stated(body, config.task), task.decision(probs, config)
        if said != source:
            disagree.append((path, said, source))
        for index, probability in task.carried(body).items():
            if abs(probability - probs[index]) >= worst[0]:
                worst = (abs(probability - probs[index]), path, index, probability, probs[index])
    agreement = 1 - len(disagree) / len(paths)
    if agreement < tolerance.top1_agreement:
        path, said, source = disagree[0]
        raise ArchiveError(f"{mar_path}: {len(disagree)} of {len(paths)} images disagree with the source model "
                           f"on the {'positive labels' if config.task == 'multilabel' else 'top-1 class'} "
                           f"({fmt} needs agreement >= {tolerance.top1_agreement}); {path.name}: archive says "
                           f"{_named(config, said)}, source model says {_named(config, source)}")
    diff, path, index, probability, source = worst
    if diff > tolerance.probability:
        raise ArchiveError(f"{mar_path}: image {path.name}: probability of {config.labels[index]} is {probability:.7f} "
                           f"in the archive, {source:.7f} in the source model ({fmt} tolerance {tolerance.probability})")
    return agreement, diff


def _named(config, said):
    named = shipped.module("classification").named(said, config)
    return "{" + ", ".join(named) + "}" if isinstance(named, list) else named


def quality(config, bodies, labels):
    """(accuracy, mean AUROC) of the eval set's answers against its labels; None where not measurable."""
    if not labels or any(label is None for label in labels):
        return None, None
    if config.task == "multilabel":
        probabilities = [[p["probability"] for p in body["predictions"]] for body in bodies]
        return None, scores.mean_auroc(probabilities, labels, config.labels)[0]
    task = shipped.module("classification")
    return scores.accuracy([task.named(task.stated(body, config.task), config) for body in bodies], labels), None


def serialized_size(mar_path, manifest):
    with zipfile.ZipFile(mar_path) as archive:
        return archive.getinfo(manifest["serializedFile"]).file_size


def source_probabilities(mv, config, image_paths):
    """Probabilities (N x labels) of the source model (model_defs + weights) on `image_paths`, through
    torchvision's transforms for the configured geometry, averaged over the views after the activation."""
    import torch
    from torchvision import transforms

    image_io, contract = shipped.module("image_io"), shipped.contract()
    tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize(config.mean, config.std)])
    if config.crop == "none":
        views = transforms.Compose([transforms.Resize(list(config.image_size)), lambda image: [image]])
    elif config.crop == "center":
        views = transforms.Compose([transforms.Resize(config.resize), transforms.CenterCrop(list(config.image_size)),
                                    lambda image: [image]])
    else:
        views = transforms.Compose([transforms.Resize(config.resize), transforms.TenCrop(list(config.image_size))])
    model = build_model(mv.model_def, mv.weights)
    rows = []
    with torch.inference_mode():
        for path in image_paths:
            image = image_io.decode_image(path.read_bytes(), config)
            inputs = torch.stack([tensor(view) for view in views(image)])
            rows.append(contract.activate(model(inputs), config).mean(dim=0))
    return torch.stack(rows)
