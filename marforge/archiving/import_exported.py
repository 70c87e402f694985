"""`marforge import --exported FILE`: a model exported elsewhere becomes a registry version, no model
definition needed.

    python -m marforge import mnist 1.0 --exported mnist.onnx --labels-file labels.txt \
        --image-size 28 --color grayscale --mean 0.1307 --std 0.3081 --samples my_images/
    python -m marforge import reviews 1.0 --exported reviews.pt2 --handler-file handlers/reviews.py \
        --extra-file vocab.json --samples my_texts/

The file is recognised by its content (archiving/exported.py: TorchScript, ONNX or a torch.export
program; anything else is refused saying what it is) and copied, unchanged, to
`weights/<name>-<version><its kind's suffix>`, with `weights/<name>-<version>.json` recording what
it is (kind, inputs and outputs, producer, sha256) and where it came from. Served by marforge's
image handler, it needs the labels and preprocessing a checkpoint import needs, and is run once on a
batch of one and of two images to check that it answers one value per label (the server batches);
served by the user's own handler (`--handler-file`, with its extra files and requirements), marforge
does not interpret it: its samples' expected answers are recorded next (`python -m marforge expect`).
The version is added to models.toml as `exported = "<kind>"`.
"""

import json
import shutil
from pathlib import Path

from marforge import files, shipped, tasks
from marforge.archiving import exported, importer
from marforge.errors import CheckpointError


def import_exported(project, name, version, path, own=None, preset=None, handler=None, force=False, command=None,
                    **given):
    """Import the exported model at `path` as `name` `version` of `project`; returns (the metadata
    written, the report lines). `own`: the own handler's registry entries (importer.own_entries), or
    None for marforge's handler, which needs `given`'s labels and preprocess (or a preset's)."""
    import torch

    kind = exported.identify(path)
    weights = project.weights_dir / f"{name}-{version}{exported.KINDS[kind].suffix}"
    if weights.exists() and not force:
        raise CheckpointError(f"{weights} exists already: a version's model is never replaced silently",
                              "choose another version, or pass --force to replace it")
    described = exported.describe(path, kind)
    if own:
        outputs = {"task": tasks.CUSTOM}
    else:
        chosen = importer.settings(preset, need_model_def=False, **given)
        contract = shipped.contract()
        preprocess = contract.preprocess_metadata(**chosen["preprocess"])
        outputs = {"task": chosen["task"] or "multiclass", "activation": chosen["activation"],
                   "labels": list(chosen["labels"]), "preprocess": preprocess}
        contract.handler_section(outputs, handler or {})
        _check_batches(exported.load(path, kind), kind, path, outputs)
    weights.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, weights)
    metadata = {
        "name": name, "version": version, "sha256": files.sha256(weights), "file_size": weights.stat().st_size,
        "exported": described, **{k: v for k, v in outputs.items() if v},
        "source": {"file": Path(path).name, "sha256": files.sha256(path), "size": Path(path).stat().st_size,
                   **({"preset": preset} if preset else {})},
        "command": command or f"python -m marforge import {name} {version} --exported {path}",
        "torch_version": torch.__version__,
        "imported": files.utc_now(),
    }
    metadata_path = weights.with_name(f"{name}-{version}.json")
    files.write_atomic(metadata_path, json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    entries = {"exported": kind, **(own or {}), **({"handler": handler} if handler and not own else {})}
    report = [f"read {path}: a {kind} model ({_signature(described)})", f"wrote {weights} and {metadata_path}",
              importer.register(project, name, version, entries)]
    return metadata, report


def _signature(described):
    shown = [f"{value['name']} {value.get('shape')} {value.get('dtype')}" for value in described.get("inputs", [])]
    return "inputs: " + ", ".join(shown) if shown else "its inputs are not recorded in the file"


def _check_batches(model, kind, path, outputs):
    """CheckpointError unless the model answers a batch of one and of two images as its task's interface
    says (importer.check_outputs): TorchServe batches requests, so a batch dimension fixed at export fails."""
    for batch in (1, 2):
        try:
            importer.check_outputs(model, outputs["preprocess"], outputs["labels"], path, f"the {kind} model",
                                   outputs["task"], batch=batch)
        except CheckpointError as exc:
            if batch == 1:
                raise
            raise CheckpointError(f"{exc.message} (it answers a batch of one image: its batch dimension may be fixed)",
                                  "export it with a dynamic batch dimension (torch.onnx.export dynamic_axes={'input': {0: "
                                  "'batch'}}, or torch.export.export(..., dynamic_shapes=...) with a torch.export.Dim)") from None
