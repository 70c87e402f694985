"""Foreign checkpoints: what a file is, where its tensors are, and how its keys become a model's.

`read` says what a file is before anything unpickles it (a Git LFS pointer, an HTML page, a
truncated file, safetensors, torch's zip or legacy serialization), then loads it with
`weights_only=True` (safetensors through the `safetensors` package) and finds the tensors: the whole
file, or its `state_dict` / `model_state_dict` / `model` entry, or the entry a `key` names.
`match` maps its keys onto a model's by rules, each applied only where it is needed and each
reported: strip `module.` (DataParallel), strip `_orig_mod.` (torch.compile), the DenseNet legacy
names of PyTorch 0.3 (torchvision's own regex) when the model has dense layers, BatchNorm's
`num_batches_tracked` when the checkpoint predates it, explicit prefixes, and one common first
component (Lightning's `model.`, `net.`) only when that makes the key sets match exactly. What is
left must match exactly, shape for shape: there is no non-strict load, because a non-strict load
of a checkpoint whose names do not match leaves most of the network random and still "works".
Every refusal is a CheckpointError that says what the file is and what to do.
"""

import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from marforge.errors import CheckpointError

CONTAINER_KEYS = ("state_dict", "model_state_dict", "model")
LEGACY_MAGIC = bytes.fromhex("80028a0a6cfc9c46f9206aa85019")  # pickle protocol 2 + torch's legacy magic number
# torchvision/models/densenet.py (_load_state_dict): PyTorch 0.3's "norm.1" became "norm1"
DENSENET_LEGACY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")
SHOWN = 5  # example keys in a refusal


@dataclass
class Checkpoint:
    path: Path
    serialization: str  # "zip", "legacy" or "safetensors"
    container_key: str  # the entry that held the tensors, or None for the whole file
    tensors: dict
    other_entries: dict = field(default_factory=dict)  # what else the file held: {key: type name}


def sniff(path):
    """What the file is, from its first bytes: "zip", "legacy" or "safetensors"; anything else
    raises a CheckpointError saying what the file is instead."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(512)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file", "pass the checkpoint's path with --checkpoint") from None
    def refuse(what, hint):
        raise CheckpointError(f"{path}: this is not a checkpoint: it is {what}", hint)
    if size == 0:
        refuse("an empty file", "download or copy the checkpoint again")
    if head.startswith(b"version https://git-lfs.github.com/spec/"):
        oid = re.search(rb"oid sha256:([0-9a-f]{64})", head)
        refuse(f"a Git LFS pointer ({size} bytes) to {oid.group(1).decode()[:12] if oid else 'a file'}..., not the file",
               "fetch the real file: git lfs pull (in its repository), or download it again")
    if head.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html")):
        refuse(f"an HTML page ({size} bytes): a download that got a login, error or redirect page",
               "download the checkpoint again from a link that serves the file itself")
    if head.startswith(b"PK\x03\x04"):
        if not zipfile.is_zipfile(path):
            refuse(f"a truncated or damaged zip (torch.save) file ({size} bytes)", "download or copy it again")
        return "zip"
    if head.startswith(LEGACY_MAGIC):
        return "legacy"
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < size:
        return "safetensors"
    refuse(f"a file of {size} bytes that starts with {head[:16]!r}: not torch.save's zip or legacy format, nor "
           "safetensors", "export the model's state_dict with torch.save or safetensors")


def read(path, key=None):
    """Load a checkpoint safely and find its tensors; a Checkpoint, or a CheckpointError saying why not."""
    path = Path(path)
    serialization = sniff(path)
    loaded = _load_safetensors(path) if serialization == "safetensors" else _load_torch(path, serialization)
    return _find_tensors(path, serialization, loaded, key)


def _load_safetensors(path):
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError(f"{path}: a safetensors file, and the safetensors package is not installed",
                              "pip install -r requirements.txt") from None
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors reports a damaged header or a short file with its own types
        raise CheckpointError(f"{path}: this is not a complete checkpoint: a damaged or truncated safetensors "
                              f"file ({exc})", "download or copy it again") from None


def _load_torch(path, serialization):
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        unsafe = re.search(r"(?:Unsupported global|global): GLOBAL ([\w.]+)", text) or re.search(r"GLOBAL ([\w.]+)", text)
        if unsafe:
            name = unsafe.group(1)
            model = " (a whole pickled model rather than its weights)" if name.rsplit(".", 1)[-1][:1].isupper() else ""
            raise CheckpointError(
                f"{path}: the checkpoint holds a {name}{model}, which loading with weights_only=True refuses "
                "(unpickling it could run any code)", trusted_conversion(path)) from None
        raise _truncated(path, serialization, text) from None
    except (EOFError, RuntimeError, ValueError, OSError) as exc:
        raise _truncated(path, serialization, str(exc)) from None


def _truncated(path, serialization, detail):
    return CheckpointError(f"{path}: this is not a complete checkpoint: a truncated or damaged {serialization} "
                           f"torch.save file ({detail.splitlines()[0][:200]})", "download or copy it again")


def trusted_conversion(path):
    """The one command that turns a checkpoint holding pickled objects into plain tensors, to run once
    where the file is trusted (it unpickles; a whole pickled model needs its class importable there)."""
    out = Path(path).with_name(Path(path).name + ".state_dict.pt")
    return ("if you trust the file, convert it once, in an environment where unpickling it is safe: "
            f"python -c \"import torch; c = torch.load('{path}', map_location='cpu', weights_only=False); "
            "s = c.state_dict() if hasattr(c, 'state_dict') else c.get('state_dict', c); "
            f"torch.save({{k: v for k, v in s.items() if isinstance(v, torch.Tensor)}}, '{out}')\" "
            f"and import {out.name}")


def _is_tensor_dict(value):
    import torch

    return isinstance(value, dict) and value and all(isinstance(v, torch.Tensor) for v in value.values())


def _find_tensors(path, serialization, loaded, key):
    import torch

    if isinstance(loaded, torch.nn.Module):  # only possible through an allow-listed global
        raise CheckpointError(f"{path}: holds a whole {type(loaded).__name__} model, not its weights",
                              trusted_conversion(path))
    if not isinstance(loaded, dict):
        raise CheckpointError(f"{path}: holds a {type(loaded).__name__}, not a dict of tensors",
                              "save the model's state_dict: torch.save(model.state_dict(), path)")
    others = {k: type(v).__name__ for k, v in loaded.items()}
    if key is not None:
        if not _is_tensor_dict(loaded.get(key)):
            raise CheckpointError(f"{path}: has no entry {key!r} holding tensors (its entries: "
                                  f"{_entries(others)})", "pass --key with one of the entries that holds the weights")
        return Checkpoint(path, serialization, key, dict(loaded[key]), {k: v for k, v in others.items() if k != key})
    if _is_tensor_dict(loaded):
        return Checkpoint(path, serialization, None, dict(loaded))
    for name in CONTAINER_KEYS:
        if _is_tensor_dict(loaded.get(name)):
            return Checkpoint(path, serialization, name, dict(loaded[name]), {k: v for k, v in others.items() if k != name})
    raise CheckpointError(f"{path}: no entry of this dict holds the model's tensors (its entries: {_entries(others)})",
                          f"pass --key NAME for the entry that does (tried: {', '.join(CONTAINER_KEYS)})")


def _entries(types):
    return ", ".join(f"{k} ({v})" for k, v in types.items()) or "none"


@dataclass
class Matched:
    state_dict: dict  # the checkpoint's tensors under the model's names
    remaps: list  # each rule applied, in words
    filled: list  # model keys the checkpoint did not have and that were filled (num_batches_tracked)


def match(checkpoint, model, model_def, strip_prefix=None, add_prefix=None):
    """Rename the checkpoint's tensors to the model's keys by the rules, then check names and shapes;
    returns a Matched, or raises CheckpointError naming what still differs and the flag that fixes it."""
    target = model.state_dict()
    keys, remaps = dict(checkpoint.tensors), []

    def rename(description, fn):
        nonlocal keys
        renamed = {fn(k): v for k, v in keys.items()}
        if renamed.keys() != keys.keys():
            keys = renamed
            remaps.append(description)

    if strip_prefix:
        rename(f"strip {strip_prefix!r} (--strip-prefix)", lambda k: k.removeprefix(strip_prefix))
    if all(k.startswith("module.") for k in keys) and not any(k.startswith("module.") for k in target):
        rename("strip 'module.' (nn.DataParallel)", lambda k: k.removeprefix("module."))
    if any("_orig_mod." in k for k in keys) and not any("_orig_mod." in k for k in target):
        rename("strip '_orig_mod.' (torch.compile)", lambda k: k.replace("_orig_mod.", ""))
    if any("denselayer" in k for k in target) and any(DENSENET_LEGACY.match(k) for k in keys):
        rename("DenseNet legacy names (norm.1 -> norm1, conv.2 -> conv2; torchvision's remap)",
               lambda k: (lambda m: m.group(1) + m.group(2) if m else k)(DENSENET_LEGACY.match(k)))
    if add_prefix:
        rename(f"add {add_prefix!r} (--add-prefix)", lambda k: add_prefix + k)
    first = {k.split(".", 1)[0] for k in keys}
    if len(first) == 1 and not _matches(keys, target):
        prefix = first.pop() + "."
        if _matches({k.removeprefix(prefix) for k in keys}, target):
            rename(f"strip the common first component {prefix!r} (Lightning and similar wrappers)",
                   lambda k: k.removeprefix(prefix))
    filled = sorted(k for k in set(target) - set(keys) if k.endswith("num_batches_tracked"))
    for k in filled:
        keys[k] = target[k].clone().zero_()
    if filled:
        remaps.append(f"num_batches_tracked filled for {len(filled)} BatchNorm layer(s) (saved before PyTorch 0.4)")
    _check_names(checkpoint, keys, target, model_def, remaps)
    _check_shapes(keys, target, model_def)
    return Matched(keys, remaps, filled)


def _matches(keys, target):
    """True when `keys` are the model's, but for BatchNorm's num_batches_tracked (which can be filled)."""
    missing = set(target) - set(keys)
    return set(keys) <= set(target) and all(k.endswith("num_batches_tracked") for k in missing)


def _check_names(checkpoint, keys, target, model_def, remaps):
    missing, unexpected = sorted(set(target) - set(keys)), sorted(set(keys) - set(target))
    if not missing and not unexpected:
        return
    applied = f" after {'; '.join(remaps)}" if remaps else ""
    message = (f"{checkpoint.path}: {len(missing) + len(unexpected)} key(s) do not match {model_def}{applied}: "
               f"{len(missing)} of the model's {len(target)} are missing from the checkpoint"
               f"{_examples(missing)}, {len(unexpected)} of its {len(keys)} are unexpected{_examples(unexpected)}")
    raise CheckpointError(message, _suggestion(missing, unexpected, model_def))


def _examples(keys):
    return f" ({', '.join(keys[:SHOWN])}{', ...' if len(keys) > SHOWN else ''})" if keys else ""


def _suggestion(missing, unexpected, model_def):
    """The flag that would make the key sets match, when one prefix explains the difference."""
    for have in unexpected[:1]:
        for want in missing:
            if have.endswith(want) and have != want:
                return f"pass --strip-prefix {have[:-len(want)]!r}"
            if want.endswith(have) and have != want:
                return f"pass --add-prefix {want[:-len(have)]!r}"
    return (f"check that {model_def} is the architecture the checkpoint was trained with (--model-def), "
            "or pass --strip-prefix / --add-prefix")


def _check_shapes(keys, target, model_def):
    wrong = [(k, tuple(keys[k].shape), tuple(v.shape)) for k, v in target.items() if tuple(keys[k].shape) != tuple(v.shape)]
    if wrong:
        shown = "; ".join(f"{k} is {list(a)} in the checkpoint, {list(b)} in the model" for k, a, b in wrong[:SHOWN])
        raise CheckpointError(f"{len(wrong)} tensor(s) have another shape than {model_def} expects: {shown}",
                              "pass the --model-def (and --labels) the checkpoint was trained with")
