"""Weights files and the model definitions they belong to.

A version's weights are `weights/<name>-<version>.pt`, a plain state_dict (tensors only, loadable
with `weights_only=True`, so loading never unpickles arbitrary objects), with its provenance in
`weights/<name>-<version>.json` (sha256, labels, preprocessing, metrics, recipe, command). A model
definition is a file under model_defs/ defining exactly one nn.Module class with a no-argument
constructor, as TorchServe requires.
"""

import hashlib
import importlib.util
import json
import pickle

from marforge.errors import WeightsError
from marforge.files import sha256


def read_metadata(mv) -> dict:
    """The weights' provenance metadata (weights/<key>.json) as it is: JSON only, the weights file is
    neither hashed nor loaded. For callers that want a field of it (labels, task, synthetic); what
    builds an archive from the weights calls verified_metadata."""
    if not mv.metadata.is_file():
        raise WeightsError(f"{mv.metadata}: weights metadata not found",
                           f"make weights (or python -m marforge train {mv.name} {mv.version})")
    return json.loads(mv.metadata.read_text())


def verified_metadata(mv) -> dict:
    """The weights' provenance metadata, after checking that the weights file matches its sha256 and
    is a plain state_dict (what an archive is built from)."""
    metadata = read_metadata(mv)
    if not mv.weights.is_file():
        raise WeightsError(f"{mv.weights}: weights file not found", "git checkout weights/ or make weights")
    actual = sha256(mv.weights)
    if actual != metadata.get("sha256"):
        raise WeightsError(
            f"{mv.weights}: sha256 {actual[:12]}... does not match {mv.metadata.name} "
            f"({str(metadata.get('sha256'))[:12]}...): the weights were changed or corrupted",
            f"git checkout {mv.weights.name} or retrain with: {metadata.get('command', 'make weights')}",
        )
    if mv.exported:
        from marforge.archiving import exported

        found = exported.identify(mv.weights)
        if found != mv.exported:
            raise WeightsError(f"{mv.weights}: holds a {found} model, but models.toml says exported = {mv.exported!r}",
                               f'set exported = "{found}" for {mv.name} {mv.version} in models.toml, or import the right file')
    else:
        load_state_dict(mv.weights)
    return metadata


def load_state_dict(path):
    """Load a plain state_dict without unpickling arbitrary objects, or say how to convert the file."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, EOFError) as exc:
        raise WeightsError(
            f"{path}: not a plain state_dict loadable with weights_only=True ({str(exc).splitlines()[0]})",
            "if you trust the file, convert it once: "
            "torch.save(torch.load(path, weights_only=False).state_dict(), path)",
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: holds a {type(state).__name__}, not a state_dict of tensors",
                           "save model.state_dict(), not the model")
    return state


def model_class(model_def):
    """The one nn.Module class that a model definition file defines."""
    from torch import nn

    module = import_file(model_def, f"marforge_model_{hashlib.sha256(str(model_def).encode()).hexdigest()[:12]}")
    classes = [c for c in vars(module).values()
               if isinstance(c, type) and issubclass(c, nn.Module) and c.__module__ == module.__name__]
    if len(classes) != 1:
        raise WeightsError(f"{model_def}: must define exactly one nn.Module class, found {len(classes)}")
    return classes[0]


def task_of(mv) -> str:
    """The task `mv`'s weights were trained for (their metadata's `task`): multiclass when it names none
    or the metadata is not made yet (the CheXNet demo's, before make archive runs the demo). Standard
    library only: the Makefile's archive list asks it."""
    return (read_metadata(mv).get("task") or "multiclass") if mv.metadata.is_file() else "multiclass"


def source_model(mv):
    """The model a version is built from, run directly, eval mode, on the CPU: its exported file loaded
    as its kind says (exported.py), else its model definition with its weights."""
    if mv.exported:
        from marforge.archiving import exported

        return exported.load(mv.weights, mv.exported)
    return build_model(mv.model_def, mv.weights)


def build_model(model_def, weights=None):
    """Instantiate the model with no arguments (as TorchServe does), load `weights` if given, eval mode."""
    model = model_class(model_def)()
    if weights is not None:
        model.load_state_dict(load_state_dict(weights))
    return model.eval()


def import_file(path, module_name):
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
