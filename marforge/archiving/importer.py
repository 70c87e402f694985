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
from pathlib import Path

from marforge import files, labelled, registry, registry_text, shipped
from marforge.archiving import checkpoints, presets
from marforge.archiving.weights import model_class, read_metadata
from marforge.errors import CheckpointError, DataError, MarforgeError, RegistryError


def settings(preset=None, need_model_def=True, **given):
    """The import's settings: the preset's, overridden by what was given (None: not given); an exported
    model (`need_model_def` False) needs no model definition."""
    chosen = presets.PRESETS.get(preset) if preset else None
    if preset and chosen is None:
        raise CheckpointError(f"unknown preset {preset!r}", f"use one of: {', '.join(presets.PRESETS)}")
    base = {"model_def": None, "labels": None, "preprocess": {}, "task": None, "activation": None, "key": None}
    if chosen:
        base.update(model_def=chosen.model_def, labels=list(chosen.labels), preprocess=dict(chosen.preprocess),
                    task=chosen.task, activation=chosen.activation, key=chosen.key)
    base["preprocess"].update({k: v for k, v in (given.pop("preprocess", None) or {}).items() if v is not None})
    base.update({k: v for k, v in given.items() if v is not None})
    missing = [flag for flag, key in (("--model-def", "model_def"), ("--labels", "labels"))
               if not base[key] and (need_model_def or key != "model_def")]
    missing += [f"--{k.replace('_', '-')}" for k in ("image_size", "color", "mean", "std") if k not in base["preprocess"]]
    if missing:
        raise CheckpointError(f"not enough to import: {', '.join(missing)} missing",
                              f"pass them, or a --preset ({', '.join(presets.PRESETS)}) that knows them")
    return base


def import_checkpoint(project, name, version, checkpoint, preset=None, fmt=None, handler=None, strip_prefix=None,
                      add_prefix=None, synthetic=None, force=False, command=None, own=None, **given):
    """Import `checkpoint` as `name` `version` of `project`; returns (the metadata written, the report:
    what was done, in lines). `given`: model_def, labels, key, task, activation and preprocess (a
    dict: image_size, color, mean, std, resize, crop), each overriding the preset's. `own`: the own
    handler's registry entries (own_entries): then only the model definition is needed, and the
    model is not run (marforge cannot know what the handler feeds it)."""
    import torch

    if own:
        return _import_for_own_handler(project, name, version, checkpoint, own, force, command, **given)
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
    check_outputs(model.eval(), preprocess, chosen["labels"], source.path, project.relative(model_def), outputs["task"])
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
        "imported": files.utc_now(),
    }
    if synthetic:
        metadata["synthetic"] = synthetic
    metadata_path = weights.with_suffix(".json")
    files.write_atomic(metadata_path, json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    report = [f"read {checkpoint}: {source.serialization} serialization, tensors in "
              f"{repr(source.container_key) if source.container_key else 'the whole file'} ({len(source.tensors)} keys)"]
    report += [f"remap: {remap}" for remap in matched.remaps] or ["remap: none needed"]
    entries = {"model_def": project.relative(model_def), **({"format": fmt} if fmt else {}),
               **({"handler": handler} if handler else {})}
    report += [f"wrote {weights} and {metadata_path}", register(project, name, version, entries)]
    return metadata, report


def check_outputs(model, preprocess, labels, path, model_def, task, batch=1):
    """CheckpointError unless the model answers a zero batch of `batch` images as its task's interface
    says, with one output per label:
    a classifier's N x labels, a segmenter's {"out": N x labels x H x W} (torchvision's interface), a
    detector's list of {"boxes", "labels", "scores"} per image (torchvision's; its label count is its own)."""
    import torch

    height, width = preprocess["image_size"]
    image = torch.zeros(batch, shipped.contract().CHANNELS[preprocess["color"]], height, width)
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


def register(project, name, version, entries):
    """Add the version with its registry `entries` to models.toml unless it is there; a line saying which."""
    known = registry.load(project.registry_file).models.get(name)  # as the file is now, not as first read
    if known and version in known.versions:
        return _kept(project, known, name, version, entries)
    before = project.registry_file.read_text()
    registry_text.add_version(project.registry_file, name, version, entries)
    line = f"added {name} {version} to {project.registry_file.name}"
    if known and _synthetic(known.versions[known.default_version]):
        registry_text.set_default_version(project.registry_file, name, version)
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


def _kept(project, known, name, version, entries):
    """The version is in models.toml already: check that it names this model definition or exported kind."""
    mv = known.versions[version]
    has = mv.exported or (mv.model_def and project.relative(mv.model_def.resolve()))
    wants = entries.get("exported") or project.relative((project.root / entries["model_def"]).resolve())
    if has != wants:
        raise RegistryError(f"{project.registry_file}: {name} {version} is registered with {has}, not {wants}",
                            f"fix the version's table in {project.registry_file.name}, or import as another version")
    return f"{name} {version} is already in {project.registry_file.name}: left as it is"


def provide_samples(project, name: str, samples: str | Path | None = None, preset: str | None = None,
                    any_file: bool = False) -> tuple[bool, str]:
    """Give `name` the sample images `make archive` verifies with, in samples/<name>/: the images of
    the folder `samples` (labels from its labels.json where it has one, else null), or else the
    preset's generated ones. Returns (whether the folder is ready, a line saying what was done or,
    when neither was there, exactly what is missing and the flag that supplies it). `any_file`: an own
    handler's samples are request bodies of any kind (every file but labels.json), not only images."""
    target = project.samples_dir / name
    shown = project.relative(target)
    if samples is not None:
        return True, f"copied {_copy_samples(Path(samples), target, any_file)} sample(s) from {samples} to {shown}/"
    if labelled.exists(target):
        return True, f"{shown}/ has sample images already: left as they are"
    chosen = presets.PRESETS.get(preset) if preset else None
    if chosen and chosen.samples:
        written = chosen.samples(target)
        return True, f"wrote {len(written)} generated sample image(s) (the {preset} preset's, unlabelled) to {shown}/"
    return False, (f"missing: sample images in {shown}/ (make archive verifies the archive with them); "
                   f"re-run with --samples DIR (make import ... SAMPLES=DIR), DIR holding images and, "
                   f"if known, a labels.json mapping each file name to its label")


def _copy_samples(source: Path, target: Path, any_file: bool = False) -> int:
    if not source.is_dir():
        raise DataError(f"--samples {source}: not a folder", "pass a folder of images, e.g. --samples my_images/")
    images = sorted(p for p in source.iterdir() if p.is_file() and (
        p.suffix.lower() in labelled.IMAGE_SUFFIXES if not any_file else p.name != labelled.LABELS_FILE))
    if not images:
        looked = "any file but labels.json" if any_file else ", ".join(labelled.IMAGE_SUFFIXES)
        raise DataError(f"--samples {source}: no samples (looked for {looked})",
                        "pass a folder that holds the samples to verify with")
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


def own_entries(project, handler_file, extra_files=(), requirements=None):
    """The registry entries of a version served by its own handler: handler_file, extra_files and
    requirements, each an existing file (relative to the project when inside it)."""
    found = {}
    for what, path in (("--handler-file", handler_file), *(("--extra-file", p) for p in extra_files),
                       *((("--requirements", requirements),) if requirements else ())):
        if not Path(path).is_file():
            raise DataError(f"{what} {path}: no such file", f"pass the path of an existing file to {what}")
        found.setdefault(what, []).append(project.relative(Path(path).resolve()))
    entries = {"handler_file": found["--handler-file"][0]}
    if extra_files:
        entries["extra_files"] = found["--extra-file"]
    if requirements:
        entries["requirements"] = found["--requirements"][0]
    return entries


def _import_for_own_handler(project, name, version, checkpoint, own, force, command, model_def=None, key=None, **ignored):
    """A checkpoint for an own handler: matched to its model definition and written as weights/<key>.pt,
    with metadata saying the task is the handler's own (tasks.CUSTOM)."""
    import torch

    from marforge import tasks

    if not model_def:
        raise CheckpointError("not enough to import: --model-def missing",
                              "pass the model definition your handler's model is built from")
    model_def = (project.root / model_def).resolve()
    weights = project.weights_dir / f"{name}-{version}.pt"
    if weights.exists() and not force:
        raise CheckpointError(f"{weights} exists already: a version's weights are never replaced silently",
                              "choose another version, or pass --force to replace them")
    source = checkpoints.read(checkpoint, key)
    model = model_class(model_def)()
    matched = checkpoints.match(source, model, project.relative(model_def), None, None)
    model.load_state_dict(matched.state_dict, strict=True)
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), weights)
    metadata = {"name": name, "version": version, "model_def": project.relative(model_def), "task": tasks.CUSTOM,
                "model_class": type(model).__name__, "sha256": files.sha256(weights), "file_size": weights.stat().st_size,
                "source": {"file": Path(checkpoint).name, "sha256": files.sha256(checkpoint), "remaps": matched.remaps},
                "command": command or f"python -m marforge import {name} {version} --checkpoint {checkpoint}",
                "torch_version": torch.__version__,
                "imported": files.utc_now()}
    metadata_path = weights.with_suffix(".json")
    files.write_atomic(metadata_path, json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    line = register(project, name, version, {"model_def": project.relative(model_def), **own})
    return metadata, [f"wrote {weights} and {metadata_path}", line]
