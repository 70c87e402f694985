"""Models exported elsewhere as a version's source, with no Python definition: a TorchScript file
(torch.jit.save), an ONNX model or a torch.export program (torch.export.save). `identify` tells them
apart by content alone, never by name, and refuses anything else saying what it is: a torch.save
checkpoint of weights (zip or legacy: `make import` takes those), an AOTInductor package, a .mar, an
image, text, an empty, missing or truncated file. `load` gives a callable on CPU tensors, `describe`
the JSON-able facts recorded at import (inputs and outputs with shapes and dtypes where the format
keeps them, producer, size, sha256), `example_inputs` a zero batch shaped like the inputs. `KINDS`
owns each kind's name and stored suffix (TorchServe's BaseHandler opens `.onnx` with onnxruntime and,
with no model file, anything else with torch.jit.load).
"""

import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

from marforge import files
from marforge.archiving import checkpoints, onnx_model
from marforge.errors import CheckpointError, ExportedModelError
from marforge.export_kinds import KINDS, ONNX, TORCH_EXPORT, TORCHSCRIPT, Kind  # noqa: F401  (re-exported)

ACCEPTED = "accepted: " + ", ".join(f"{k.name} ({k.saved_by})" for k in KINDS.values())
# torch.export.save's PT2 archive (torch._C._export.pt2_archive_constants; tests check them against torch)
PT2_FORMAT_PATH, PT2_FORMAT_VALUE, PT2_MODEL_PATH = "archive_format", b"pt2", "models/model.json"
PT2_AOTINDUCTOR_DIR = "data/aotinductor/"
PT2_LEGACY_PATH = "serialized_exported_program.json"  # torch.export.save before the PT2 archive; torch still loads it
IMPORT_HINT = ('import a checkpoint of weights with its model definition: make import NAME=<name> VERSION=<version> '
               'CHECKPOINT=<file> IMPORT_ARGS="--model-def model_defs/<file>.py"')
DEFAULT_DTYPE = "float32"  # of example inputs where the file does not say (TorchScript)
MAGIC = {b"\x89PNG\r\n\x1a\n": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image",
         b"%PDF": "a PDF document", b"\x1f\x8b": "a gzip file", b"version https://git-lfs": "a Git LFS pointer"}


def _refuse(path: Path, what: str, hint: str | None = None) -> ExportedModelError:
    return ExportedModelError(f"{path}: not an exported model: it is {what}; {ACCEPTED}",
                              hint or "pass a file written by " + ", ".join(k.saved_by for k in KINDS.values()))


def _checkpoint(path: Path, form: str) -> ExportedModelError:
    return ExportedModelError(f"{path}: this is a torch.save checkpoint of weights ({form}), not an exported model",
                              IMPORT_HINT)


def identify(path: str | Path) -> str:
    """The kind of exported model in `path` (a KINDS name), from its content; raises ExportedModelError
    saying what the file is when it is none of them."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as exc:
        raise _refuse(path, f"not a readable file ({exc.strerror or exc})", "pass the exported model's path") from None
    if size == 0:
        raise _refuse(path, "an empty file", "copy or export the model again")
    if head.startswith(b"PK\x03\x04"):
        return _identify_zip(path, size)
    try:
        serialization = checkpoints.sniff(path)
    except CheckpointError:
        serialization = None
    if serialization in ("legacy", "safetensors"):
        raise _checkpoint(path, "torch.save's legacy format" if serialization == "legacy" else "safetensors")
    problem = onnx_model.problem(path)
    if problem is None:
        return ONNX
    raise _refuse(path, *_looks_like(head, size, problem))


def _identify_zip(path: Path, size: int) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            rel = _relative(names)
            pt2 = next((n for n in names if n.split("/", 1)[-1] == PT2_FORMAT_PATH), None)
            if pt2 is not None and archive.read(pt2).strip() != PT2_FORMAT_VALUE:
                rel.discard(PT2_FORMAT_PATH)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        with open(path, "rb") as f:
            begun = _begun_like(_relative(_local_names(f.read(1 << 20))))
        like = f", begun like a {begun} file" if begun else ""
        raise _refuse(path, f"a truncated or damaged zip file ({size} bytes{like}: {exc})",
                      "copy or export the model again") from None
    kind = _zip_kind(rel)
    if kind in KINDS:
        return kind
    if kind == "checkpoint":
        raise _checkpoint(path, "torch.save's zip format: data.pkl and no TorchScript code/")
    if kind == "aotinductor":
        raise _refuse(path, "an AOTInductor package (compiled code, no exported program)",
                      "save the program itself with torch.export.save(torch.export.export(model, inputs), path)")
    if kind == "mar":
        raise _refuse(path, "a TorchServe archive (.mar)", "put it in the model store and serve it as it is")
    raise _refuse(path, f"a zip archive of {len(names)} file(s) ({', '.join(names[:3]) or 'empty'}{', ...' * (len(names) > 3)}) "
                  "and no model in a format known here")


def _relative(names: list[str]) -> set[str]:
    """Member names below the top folder torch writes every member into (<stem>/data.pkl -> data.pkl)."""
    return {name.split("/", 1)[1] for name in names if "/" in name} | set(names)


def _local_names(data: bytes) -> list[str]:
    """The member names in the local file headers of the first bytes of a zip whose directory is lost."""
    starts = [found.start() for found in re.finditer(rb"PK\x03\x04", data)]  # name length at +26, the name at +30
    return [data[s + 30:s + 30 + int.from_bytes(data[s + 26:s + 28], "little")].decode("utf-8", "replace") for s in starts]


def _zip_kind(rel: set[str]) -> str | None:
    """What a torch zip holds from its member names: a KINDS name, "checkpoint", "aotinductor", "mar" or None."""
    if "data.pkl" in rel and "constants.pkl" in rel and any(n.startswith("code/__torch__") and n.endswith(".py") for n in rel):
        return TORCHSCRIPT
    if (PT2_FORMAT_PATH in rel and PT2_MODEL_PATH in rel) or PT2_LEGACY_PATH in rel:
        return TORCH_EXPORT
    if PT2_FORMAT_PATH in rel and any(n.startswith(PT2_AOTINDUCTOR_DIR) for n in rel):
        return "aotinductor"
    if "MAR-INF/MANIFEST.json" in rel:
        return "mar"
    return "checkpoint" if "data.pkl" in rel else None


def _begun_like(rel: set[str]) -> str | None:
    """What the first members of a zip cut short show it was meant to be, from names only one writer uses
    (torch writes the weights first: a large model's first MiB names none of them)."""
    if any(n.startswith("code/__torch__") for n in rel):
        return TORCHSCRIPT
    if any(n.startswith(("data/weights/", "models/")) for n in rel) or PT2_FORMAT_PATH in rel:
        return TORCH_EXPORT
    return "torch.save checkpoint" if {".format_version", ".storage_alignment"} & rel else None


def _looks_like(head: bytes, size: int, onnx_problem: str) -> tuple[str, str | None]:
    """What a file that is none of the kinds looks like, from its first bytes, and the hint when it has its own."""
    for magic, what in MAGIC.items():
        if head.startswith(magic):
            return f"{what} ({size} bytes)", None
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return f"a Python pickle ({size} bytes)", IMPORT_HINT
    try:
        text = head.decode("utf-8")
        if all(c.isprintable() or c.isspace() for c in text):
            first = text.strip().splitlines()[0][:40] if text.strip() else ""
            return (f"text ({size} bytes) starting {first!r}" if first else f"blank text ({size} bytes)"), None
    except UnicodeDecodeError:
        pass
    if head[:1] == b"\x08":  # protobuf field 1 (ModelProto.ir_version): how an ONNX file begins
        return f"{size} bytes that begin like an ONNX model, truncated or damaged: {onnx_problem}", "copy or export the model again"
    return f"{size} bytes of binary data starting {head[:8].hex(' ')}: {onnx_problem}", None


def _checked(kind: str | None, path: Path) -> str:
    if (kind := kind or identify(path)) not in KINDS:
        raise ExportedModelError(f"{path}: unknown exported-model kind {kind!r}", f"use one of: {', '.join(KINDS)}")
    return kind


def load(path: str | Path, kind: str | None = None) -> Any:
    """The model in `path` as a callable on CPU tensors, ready to run (eval mode; a torch.export module is
    in the mode it was exported in and refuses .eval()); `kind` defaults to `identify(path)`."""
    path = Path(path)
    kind = _checked(kind, path)
    try:
        return _LOADERS[kind](path)
    except ImportError as exc:
        raise ExportedModelError(f"{path}: cannot load this {kind} model: {exc}", "pip install -r requirements.txt") from exc
    except Exception as exc:  # each format's loader has its own exception types for a damaged or foreign file
        detail = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ExportedModelError(f"{path}: cannot load this {kind} model: {type(exc).__name__}: {detail}",
                                 f"check that the file is complete, or write it again with {KINDS[kind].saved_by}") from exc


def _load_torchscript(path: Path) -> Any:
    import torch

    with warnings.catch_warnings():  # torch 2.14 deprecates torch.jit; it is still what BaseHandler loads
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu").eval()


def _load_export(path: Path) -> Any:
    import torch

    return torch.export.load(str(path)).module()


_LOADERS = {TORCHSCRIPT: _load_torchscript, ONNX: onnx_model.OnnxSession, TORCH_EXPORT: _load_export}


def describe(path: str | Path, kind: str | None = None) -> dict[str, Any]:
    """JSON-able facts about the model in `path`: kind, file, size, sha256, inputs and outputs (name,
    shape with a str or None for a dynamic dimension, dtype; None where the format does not say), the
    producer, and per format: ONNX opsets, torch.export dims (their ranges), TorchScript's schema."""
    path = Path(path)
    kind, facts = _facts(path, kind)
    return {"kind": kind, "file": path.name, "size": path.stat().st_size, "sha256": files.sha256(path), **facts}


def _facts(path: Path, kind: str | None) -> tuple[str, dict[str, Any]]:
    kind = _checked(kind, path)
    try:
        return kind, _DESCRIBERS[kind](path)
    except Exception as exc:  # as in load: a damaged file fails in each format's own way
        raise ExportedModelError(f"{path}: cannot read what this {kind} model takes and returns: {type(exc).__name__}: {exc}",
                                 f"check that the file is complete, or write it again with {KINDS[kind].saved_by}") from exc


def _value(name: str, shape: list[Any] | None, dtype: str | None) -> dict[str, Any]:
    return {"name": name, "shape": shape, "dtype": dtype}


def _describe_onnx(path: Path) -> dict[str, Any]:
    facts = onnx_model.describe(path)
    return facts | {side: [_value(*v) for v in facts[side]] for side in ("inputs", "outputs")}


def _describe_export(path: Path) -> dict[str, Any]:
    import json

    import torch
    from torch.export.graph_signature import InputKind, OutputKind

    program = torch.export.load(str(path))
    nodes = {n.name: n for n in program.graph.nodes}

    def value(name: str) -> dict[str, Any]:
        val = nodes[name].meta.get("val") if name in nodes else None
        if not isinstance(val, torch.Tensor):
            return _value(name, None, None)
        return _value(name, [d if isinstance(d, int) else str(d) for d in val.shape], str(val.dtype).removeprefix("torch."))

    def bound(v: Any) -> int | None:
        return int(v) if getattr(v, "is_Integer", False) else None  # torch's int_oo: unbounded

    with zipfile.ZipFile(path) as archive:
        [member] = [n for n in archive.namelist() if n.split("/", 1)[-1] in (PT2_MODEL_PATH, PT2_LEGACY_PATH)][:1]
        recorded = json.loads(archive.read(member))
    return {"inputs": [value(s.arg.name) for s in program.graph_signature.input_specs if s.kind == InputKind.USER_INPUT],
            "outputs": [value(s.arg.name) for s in program.graph_signature.output_specs if s.kind == OutputKind.USER_OUTPUT],
            "producer": {"torch_version": recorded.get("torch_version"), "schema_version": recorded.get("schema_version")},
            "dims": {str(s): {"min": bound(r.lower), "max": bound(r.upper)} for s, r in program.range_constraints.items()}}


def _describe_torchscript(path: Path) -> dict[str, Any]:
    schema = _load_torchscript(path).forward.schema
    with zipfile.ZipFile(path) as archive:
        version = next(archive.read(n) for n in archive.namelist() if n.split("/", 1)[-1] == "version")
    return {"inputs": [_value(a.name, None, None) | {"type": str(a.type)} for a in schema.arguments[1:]],
            "outputs": [_value(r.name or f"output{i}", None, None) | {"type": str(r.type)} for i, r in enumerate(schema.returns)],
            "producer": {"file_format_version": int(version)}, "schema": str(schema)}


_DESCRIBERS = {TORCHSCRIPT: _describe_torchscript, ONNX: _describe_onnx, TORCH_EXPORT: _describe_export}


def example_inputs(path: str | Path, kind: str | None = None, batch: int = 2, shape: tuple[int, ...] | None = None) -> tuple[Any, ...]:
    """Zero tensors shaped like the model's inputs with `batch` as the first dimension; `shape` (one
    input's shape per sample, e.g. (1, 28, 28)) overrides what the file says, and is needed where it
    says nothing (TorchScript) or leaves a dimension other than the batch dynamic."""
    import torch

    path = Path(path)
    kind, facts = _facts(path, kind)
    inputs = facts["inputs"]
    hint = "pass one sample's input shape, e.g. --input-shape 1,28,28"
    if shape is not None:
        if len(inputs) != 1:
            raise ExportedModelError(f"{path}: an input shape sets one input, and this model takes {len(inputs)}",
                                     "export the model with its input shapes recorded (ONNX, torch.export)")
        return (torch.zeros(batch, *shape, dtype=getattr(torch, inputs[0]["dtype"] or DEFAULT_DTYPE)),)
    made = []
    for value in inputs:
        dims, name = value["shape"], value["name"]
        if dims is None:
            raise ExportedModelError(f"{path}: the {kind} file does not record the shape of input {name!r}", hint)
        if not dims or any(not isinstance(d, int) for d in dims[1:]):
            raise ExportedModelError(f"{path}: input {name!r} has shape {dims}: only its first (batch) dimension may be dynamic", hint)
        fixed, limits = dims[0], facts.get("dims", {}).get(dims[0], {})
        if isinstance(fixed, int) and fixed != batch:
            raise ExportedModelError(f"{path}: input {name!r} has a fixed batch size of {fixed}, not {batch}",
                                     "export the model with a dynamic batch dimension (torch.export.Dim, or ONNX dynamic_axes)")
        if not (limits.get("min") or 0) <= batch <= (limits.get("max") or batch):
            raise ExportedModelError(f"{path}: batch size {batch} is outside the exported range of {fixed}: {limits}",
                                     f"use a batch size from {limits.get('min')} to {limits.get('max')}")
        made.append(torch.zeros(batch, *dims[1:], dtype=getattr(torch, value["dtype"] or DEFAULT_DTYPE)))
    return tuple(made)
