"""Verify an archive against its source model before anything serves it.

`check` unpacks an archive, loads it as a worker does (worker.py), predicts the version's sample
images and its eval set (eval/<name>/, when it has one) in batches of the version's batch_size, and
compares every answer with the eager source model (model definition + weights) run in-process
without the handler's code, as the archive's task says (marforge/tasks/: a classifier's
probabilities and decisions, a detector's boxes, a segmenter's masks), within the format's
tolerance for that task. Labelled eval images are also scored with the task's metrics (accuracy,
mean AUROC, mAP, mIoU). For a `compile` or `cudagraphs` archive (variants.COMPILED) it also checks
that inductor really compiled the model (TorchServe falls back to eager with a warning).
"""

import dataclasses
import time
import zipfile

from marforge import labelled, shipped, tasks
from marforge.archiving import expected, variants
from marforge.archiving.mar import archive_format, manifest_of
from marforge.archiving.worker import LoadedArchive
from marforge.errors import ArchiveError, DataError


@dataclasses.dataclass(frozen=True, kw_only=True)
class Verification:
    """What verifying one archive measured (built by field name: no positional arguments)."""

    fmt: str
    samples: list  # one {"sample": file name, ...the task's summary of its answer} per sample image
    images: int  # images compared with the source model: the samples and the eval set
    agreement: float  # share of them with the source model's decision (top-1, positive set, detections, mask)
    max_diff: float  # over the numbers the handler returns (probabilities, scores; a mask's: 0)
    tolerance: variants.Tolerance
    serialized_bytes: int  # size of the archive's serialized model file
    verify_s: float
    quality: dict = dataclasses.field(default_factory=dict)  # the task's metrics on a labelled eval set, by name
    compiled_graphs: int | None = None  # compile format: graphs inductor compiled for the batches run
    build_s: float | None = None  # set by archive.build
    notes: tuple = ()  # what could not be checked, and why

    @property
    def accuracy(self):  # of a multiclass archive on the eval set's true labels (None: not measured)
        return self.quality.get("accuracy")

    @property
    def mean_auroc(self):  # of a multilabel archive on a labelled eval set
        return self.quality.get("mean_auroc")

    def with_build_time(self, seconds):
        return dataclasses.replace(self, build_s=seconds)

    def summary(self):
        compiled = f", inductor compiled {self.compiled_graphs} graph(s)" if self.compiled_graphs is not None else ""
        quality = "".join(f", eval {name.replace('_', ' ')} {value:.4f}" for name, value in self.quality.items()
                          if value is not None)
        notes = "".join(f"; {note}" for note in self.notes)
        return (f"{self.fmt}: {self.images} images, agreement {self.agreement:.4f} "
                f"(>= {self.tolerance.agreement}), max difference {self.max_diff:.2e} "
                f"(<= {self.tolerance.value}){quality}, model file {self.serialized_bytes} bytes{compiled}{notes}")


def sample_files(mv):
    """The version's sample images with their labels: [(path, label)] (a label may be None: unlabelled)."""
    return labelled.read(mv.samples, f"sample images for {mv.name}",
                         f"put a few images in {mv.samples}/ with a labels.json (file -> label, or null)")


def eval_files(mv):
    """The model's held-out evaluation images (eval/<name>/) with their true labels: [(path, label)]."""
    return labelled.read(mv.eval_dir, f"eval images for {mv.name}",
                         f"put labelled held-out images in {mv.eval_dir}/ with a labels.json (file -> label)")


def check(mar_path, mv):
    """Check an archive against the eager source model on the samples and the eval set (an own handler's:
    against its expected answers, `check_answers`); a Verification."""
    if mv.own_handler:
        return check_answers(mar_path, mv)
    started = time.monotonic()
    manifest = _manifest(mar_path, mv)
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
    task = tasks.of(config.task)
    agreement, max_diff = task.compare(mar_path, fmt, config, paths, bodies, task.reference(mv, config, paths))
    quality = task.quality(config, bodies[len(samples):], [label for _, label in evals])
    summaries = [{"sample": path.name, **task.sample_summary(body)} for (path, _), body in zip(samples, bodies)]
    return Verification(fmt=fmt, samples=summaries, images=len(paths), agreement=agreement, max_diff=max_diff,
                        quality=quality, tolerance=task.TOLERANCES[fmt], serialized_bytes=serialized_size(mar_path, manifest),
                        verify_s=time.monotonic() - started, compiled_graphs=graphs, notes=notes)


def check_answers(mar_path, mv):
    """Check an own handler's archive: loaded as a worker does, its answers to the version's samples must
    be the expected answers recorded for them (archiving/expected.py), compared as the registry's
    `answers` table says; a labelled eval set is scored by the decision field's accuracy. A Verification."""
    from marforge.tasks import custom

    started = time.monotonic()
    manifest = _manifest(mar_path, mv)
    fmt = archive_format(mar_path)
    config = custom.AnswersConfig(expected.comparison_of(mv))
    try:
        samples = sample_files(mv)
        evals = eval_files(mv) if labelled.exists(mv.eval_dir) else []
        wanted = expected.read(mv.samples, mv.version, [path.name for path, _ in samples])
    except DataError as exc:
        raise ArchiveError(f"{mar_path}: cannot verify: {exc.message}", exc.hint) from None
    paths = [path for path, _ in samples + evals]
    answers, _, _ = run_loaded(mar_path, mv, fmt, paths)
    bodies = [json_answer(mar_path, path, answer) for path, answer in zip(paths, answers)]
    expected.check(wanted, {path.name: body for (path, _), body in zip(samples, bodies)}, config.comparison,
                   source=expected.expected_file(mv.samples, mv.version))
    quality = custom.quality(config, bodies[len(samples):], [label for _, label in evals])
    notes = () if evals else (f"no eval set in {mv.eval_dir}: the {len(samples)} sample(s) only",)
    return Verification(fmt=fmt, samples=[{"sample": path.name, **custom.sample_summary(body, config)}
                                          for (path, _), body in zip(samples, bodies)],
                        images=len(samples), agreement=1.0, max_diff=0.0, quality=quality,
                        tolerance=variants.Tolerance(config.comparison.tolerance, 1.0),
                        serialized_bytes=serialized_size(mar_path, manifest), verify_s=time.monotonic() - started,
                        notes=(f"{len(samples)} sample(s) answered as expected ({expected.described(config.comparison)})",
                               *notes))


def json_answer(mar_path, path, answer):
    """An own handler's answer to one sample, as JSON; ArchiveError naming the sample when it failed or is not JSON."""
    if answer.status != 200:
        raise ArchiveError(f"{mar_path}: sample {path.name} got HTTP {answer.status}: {answer.body[:300]!r}",
                           "fix the handler (the worker's error is in the body) and rebuild")
    try:
        return answer.json()
    except ValueError:
        raise ArchiveError(f"{mar_path}: sample {path.name} was answered with something that is not JSON: "
                           f"{answer.body[:120]!r}", "marforge compares JSON answers: return a dict or list per "
                           "request from the handler's postprocess") from None


def _manifest(mar_path, mv):
    manifest = manifest_of(mar_path)
    if (manifest.get("modelName"), manifest.get("modelVersion")) != (mv.name, mv.version):
        raise ArchiveError(f"{mar_path}: manifest says {manifest.get('modelName')} "
                           f"{manifest.get('modelVersion')}, expected {mv.name} {mv.version}")
    return manifest


def run_loaded(mar_path, mv, fmt, paths):
    """Predict `paths` with the archive loaded as a worker does, in batches of the version's batch_size.

    Returns (answers, the handler's config section, graphs inductor compiled or None when fmt is not compile).
    """
    size = mv.serving["batch_size"]
    rows = [{"body": path.read_bytes()} for path in paths]
    try:
        before = variants.compile_counts() if fmt in variants.COMPILED else None  # the worker's warm-up compiles too
        with LoadedArchive(mar_path, batch_size=size) as loaded:
            answers = [answer for i in range(0, len(rows), size) for answer in loaded.predict(rows[i:i + size])]
            graphs = variants.compile_outcome(loaded.handler.model, before) if fmt in variants.COMPILED else None
            return answers, (loaded.service.context.model_yaml_config or {}).get("handler"), graphs
    except ArchiveError as exc:
        raise ArchiveError(f"{mar_path}: {exc.message}", exc.hint) from None
    except Exception as exc:  # the worker would die the same way: report it as a failed check
        raise ArchiveError(f"{mar_path}: a worker cannot load this archive: {type(exc).__name__}: {exc}",
                           "read the error above; fix the handler, model file or weights and rebuild") from None


def serialized_size(mar_path, manifest):
    with zipfile.ZipFile(mar_path) as archive:
        return archive.getinfo(manifest["serializedFile"]).file_size
