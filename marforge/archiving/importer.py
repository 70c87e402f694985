"""`marforge import`: a network trained elsewhere becomes a registry version like any other.

    python -m marforge import chexnet 1.0 --checkpoint model.pth.tar --preset chexnet

The checkpoint is read safely and its keys matched to the model definition (checkpoints.py), the
model's output size is checked against the labels, and the result is written as the project's own
kind of weights: `weights/<name>-<version>.pt`, a plain state_dict under the model's names, with
`weights/<name>-<version>.json` recording the preprocessing, labels and outputs the handler needs
and, instead of a training recipe, the checkpoint's source (file name, sha256, size, serialization,
container key, every remap applied, key counts). The version is added to models.toml (comments
kept) when it is not there yet, and `samples/<name>/` gets sample images (`provide_samples`: the
user's --samples folder, or the preset's generated ones); `make archive` and `make serve` take it
from there, and `make weights` leaves it alone (it has no train table).
"""

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

from marforge import files, labelled, registry, shipped
from marforge.archiving import checkpoints, presets
from marforge.archiving.weights import model_class, read_metadata
from marforge.errors import CheckpointError, DataError, MarforgeError, RegistryError


def settings(preset=None, **given):
    """The import's settings: the preset's, overridden by what was given (None: not given)."""
    chosen = presets.PRESETS.get(preset) if preset else None
    if preset and chosen is None:
        raise CheckpointError(f"unknown preset {preset!r}", f"use one of: {', '.join(presets.PRESETS)}")
    base = {"model_def": None, "labels": None, "preprocess": {}, "task": None, "activation": None, "key": None}
    if chosen:
        base.update(model_def=chosen.model_def, labels=list(chosen.labels), preprocess=dict(chosen.preprocess),
                    task=chosen.task, activation=chosen.activation, key=chosen.key)
    base["preprocess"].update({k: v for k, v in (given.pop("preprocess", None) or {}).items() if v is not None})
    base.update({k: v for k, v in given.items() if v is not None})
    missing = [flag for flag, key in (("--model-def", "model_def"), ("--labels", "labels")) if not base[key]]
    missing += [f"--{k.replace('_', '-')}" for k in ("image_size", "color", "mean", "std") if k not in base["preprocess"]]
    if missing:
        raise CheckpointError(f"not enough to import: {', '.join(missing)} missing",
                              f"pass them, or a --preset ({', '.join(presets.PRESETS)}) that knows them")
    return base


def import_checkpoint(project, name, version, checkpoint, preset=None, fmt=None, handler=None, strip_prefix=None,
                      add_prefix=None, synthetic=None, force=False, command=None, **given):
    """Import `checkpoint` as `name` `version` of `project`; returns (the metadata written, the report:
    what was done, in lines). `given`: model_def, labels, key, task, activation and preprocess (a
    dict: image_size, color, mean, std, resize, crop), each overriding the preset's."""
    import torch

    chosen = settings(preset, **given)
    contract = shipped.contract()
    model_def = (project.root / chosen["model_def"]).resolve()
    weights = project.weights_dir / f"{name}-{version}.pt"
    if weights.exists() and not force:
        raise CheckpointError(f"{weights} exists already: a version's weights are never replaced silently",
                              "choose another version, or pass --force to replace them")
    preprocess = contract.preprocess_metadata(**chosen["preprocess"])
    outputs = {"task": chosen["task"] or "multiclass", "activation": chosen["activation"]}
    contract.handler_section({"preprocess": preprocess, "labels": chosen["labels"], **outputs}, handler or {})
    source = checkpoints.read(checkpoint, chosen["key"])
    model = model_class(model_def)()
    matched = checkpoints.match(source, model, project.relative(model_def), strip_prefix, add_prefix)
    model.load_state_dict(matched.state_dict, strict=True)
    _check_outputs(model.eval(), preprocess, chosen["labels"], source.path, project.relative(model_def), outputs["task"])
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), weights)
    metadata = {
        "name": name, "version": version, "model_def": project.relative(model_def),
        "model_class": type(model).__name__, "sha256": files.sha256(weights), "file_size": weights.stat().st_size,
        "labels": list(chosen["labels"]), "preprocess": preprocess, **{k: v for k, v in outputs.items() if v},
        "source": {"file": Path(checkpoint).name, "sha256": files.sha256(checkpoint),
                   "size": Path(checkpoint).stat().st_size, "serialization": source.serialization,
                   "container_key": source.container_key, "other_entries": source.other_entries,
                   "remaps": matched.remaps, "keys": {"checkpoint": len(source.tensors), "model": len(matched.state_dict),
                                                      "filled": len(matched.filled)},
                   **({"preset": preset} if preset else {})},
        "command": command or f"python -m marforge import {name} {version} --checkpoint {checkpoint}"
                              + (f" --preset {preset}" if preset else ""),
        "torch_version": torch.__version__,
        "imported": datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
    }
    if synthetic:
        metadata["synthetic"] = synthetic
    metadata_path = weights.with_suffix(".json")
    files.write_atomic(metadata_path, json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    report = [f"read {checkpoint}: {source.serialization} serialization, tensors in "
              f"{repr(source.container_key) if source.container_key else 'the whole file'} ({len(source.tensors)} keys)"]
    report += [f"remap: {remap}" for remap in matched.remaps] or ["remap: none needed"]
    report += [f"wrote {weights} and {metadata_path}", _register(project, name, version, model_def, fmt, handler)]
    return metadata, report


def _check_outputs(model, preprocess, labels, path, model_def, task):
    """CheckpointError unless the model answers as its task's interface says, with one output per label:
    a classifier's N x labels, a segmenter's {"out": N x labels x H x W} (torchvision's interface), a
    detector's list of {"boxes", "labels", "scores"} per image (torchvision's; its label count is its own)."""
    import torch

    height, width = preprocess["image_size"]
    image = torch.zeros(1, shipped.contract().CHANNELS[preprocess["color"]], height, width)
    hint = {"detection": "pass --model-def with a torchvision detection model",
            "segmentation": "pass --model-def with a torchvision segmentation model"}.get(task, "check --image-size and --color")
    try:
        with torch.inference_mode():
            out = model(list(image)) if task == "detection" else model(image)
    except Exception as exc:  # the user's model refuses the input its task's interface sends
        shape = "a list of one " * (task == "detection") + " x ".join(map(str, image.shape[task == "detection":]))
        raise CheckpointError(f"{path}: {model_def} cannot run as a {task} model on {shape} input: "
                              f"{type(exc).__name__}: {exc}", hint) from None
    if task == "detection":
        found = out[1] if isinstance(out, tuple) else out
        if not (isinstance(found, list) and found and isinstance(found[0], dict) and {"boxes", "labels", "scores"} <= set(found[0])):
            raise CheckpointError(f"{path}: {model_def} does not answer as a torchvision detector does (a list of "
                                  '{"boxes", "labels", "scores"} per image)', hint)
        return
    if task == "segmentation":
        if not (isinstance(out, dict) and "out" in out):
            raise CheckpointError(f"{path}: {model_def} does not answer as a torchvision segmenter does "
                                  '({"out": N x classes x H x W})', hint)
        size = out["out"].shape[1]
    else:
        size = out.shape[-1]
    if size != len(labels):
        raise CheckpointError(f"{path}: {model_def} with these weights answers {size} values per image, but "
                              f"{len(labels)} labels were given", f"pass --labels with {size} names in output order")


def _register(project, name, version, model_def, fmt, handler):
    """Add the version to models.toml unless it is there; a line saying which."""
    known = registry.load(project.registry_file).models.get(name)  # as the file is now, not as first read
    if known and version in known.versions:
        return _kept(project, known, name, version, model_def)
    entries = {"model_def": project.relative(model_def)}
    entries.update({"format": fmt} if fmt else {}, **({"handler": handler} if handler else {}))
    before = project.registry_file.read_text()
    registry.add_version(project.registry_file, name, version, entries)
    line = f"added {name} {version} to {project.registry_file.name}"
    if known and _synthetic(known.versions[known.default_version]):
        registry.set_default_version(project.registry_file, name, version)
        line += f" as its default ({known.default_version} has synthetic weights)"
    try:
        registry.load(project.registry_file)
    except RegistryError:
        project.registry_file.write_text(before)
        raise
    return line


def _synthetic(mv):
    """True when a version's weights are labelled synthetic (a demo: never the default over real weights)."""
    try:
        return bool(read_metadata(mv).get("synthetic"))
    except MarforgeError:
        return False


def _kept(project, known, name, version, model_def):
    """The version is in models.toml already: check that it names this model definition."""
    if known.versions[version].model_def.resolve() != model_def:
        raise RegistryError(f"{project.registry_file}: {name} {version} is registered with "
                            f"{known.versions[version].model_def}, not {model_def}",
                            f"fix the version's model_def in {project.registry_file.name}, or import as another version")
    return f"{name} {version} is already in {project.registry_file.name}: left as it is"


def provide_samples(project, name: str, samples: str | Path | None = None, preset: str | None = None) -> tuple[bool, str]:
    """Give `name` the sample images `make archive` verifies with, in samples/<name>/: the images of
    the folder `samples` (labels from its labels.json where it has one, else null), or else the
    preset's generated ones. Returns (whether the folder is ready, a line saying what was done or,
    when neither was there, exactly what is missing and the flag that supplies it)."""
    target = project.samples_dir / name
    shown = project.relative(target)
    if samples is not None:
        return True, f"copied {_copy_samples(Path(samples), target)} sample image(s) from {samples} to {shown}/"
    if labelled.exists(target):
        return True, f"{shown}/ has sample images already: left as they are"
    chosen = presets.PRESETS.get(preset) if preset else None
    if chosen and chosen.samples:
        written = chosen.samples(target)
        return True, f"wrote {len(written)} generated sample image(s) (the {preset} preset's, unlabelled) to {shown}/"
    return False, (f"missing: sample images in {shown}/ (make archive verifies the archive with them); "
                   f"re-run with --samples DIR (make import ... SAMPLES=DIR), DIR holding images and, "
                   f"if known, a labels.json mapping each file name to its label")


def _copy_samples(source: Path, target: Path) -> int:
    if not source.is_dir():
        raise DataError(f"--samples {source}: not a folder", "pass a folder of images, e.g. --samples my_images/")
    images = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in labelled.IMAGE_SUFFIXES)
    if not images:
        raise DataError(f"--samples {source}: no images (looked for {', '.join(labelled.IMAGE_SUFFIXES)})",
                        "pass a folder that holds the images to verify with")
    known = _labels_of(source)
    target.mkdir(parents=True, exist_ok=True)
    for image in images:
        shutil.copyfile(image, target / image.name)
    labelled.write(target, {image.name: known.get(image.name) for image in images})
    return len(images)


def _labels_of(source: Path) -> dict:
    """The labels of `source`'s labels.json ({} when it has none)."""
    labels_file = source / labelled.LABELS_FILE
    if not labels_file.is_file():
        return {}
    try:
        mapping = json.loads(labels_file.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{labels_file}: not valid JSON ({exc})", f"fix {labels_file}") from None
    if not isinstance(mapping, dict):
        raise DataError(f"{labels_file}: must map each image file name to its label", f"fix {labels_file}")
    return mapping
